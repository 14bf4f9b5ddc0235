"""Labels and positions of a pack, for both label conventions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packer.core.labels import make_labels, positions
from packer.core.errors import ConfigError


def test_docstring_example():
    ids = np.array([1, 2, 3, 4, 5])
    mask = np.array([0, 1, 1, 1, 1], np.uint8)  # the first token of segment 2 is trained on, yet...
    cu = np.array([0, 3, 5])
    assert make_labels(ids, mask, cu, "unshifted").tolist() == [-100, 2, 3, -100, 5]
    assert make_labels(ids, mask, cu, "shifted").tolist() == [2, 3, -100, 5, -100]
    assert positions(np.array([3, 2]), cu).tolist() == [0, 1, 2, 0, 1]
    with pytest.raises(ConfigError, match="label_mode 'x'"):
        make_labels(ids, mask, cu, "x")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=8), st.randoms())
def test_conventions_agree_and_never_cross(seg_lens, rnd):
    seg = np.array(seg_lens)
    cu = np.concatenate([[0], np.cumsum(seg)])
    n = int(cu[-1])
    ids = np.array([rnd.randint(0, 50) for _ in range(n)])
    mask = np.array([rnd.randint(0, 1) for _ in range(n)], np.uint8)
    un = make_labels(ids, mask, cu, "unshifted")
    sh = make_labels(ids, mask, cu, "shifted")
    # A model shifting internally pairs logits[i] with unshifted[i + 1]: exactly the shifted labels.
    assert sh[:-1].tolist() == un[1:].tolist() and sh[-1] == -100
    seg_of = np.repeat(np.arange(len(seg)), seg)
    for i in range(n - 1):
        if sh[i] != -100:
            assert seg_of[i] == seg_of[i + 1], "a target from another segment"
            assert mask[i + 1] == 1
