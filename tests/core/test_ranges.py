"""Index helpers: checked against plain Python on random runs."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from packer.core.ranges import concat_ranges, within


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 6)), max_size=20))
def test_against_python(runs):
    starts = np.array([s for s, _ in runs], dtype=np.int64)
    lengths = np.array([n for _, n in runs], dtype=np.int64)
    assert within(lengths).tolist() == [i for _, n in runs for i in range(n)]
    assert concat_ranges(starts, lengths).tolist() == [s + i for s, n in runs for i in range(n)]
