"""The tokenize stage's table (packer.core.formats.tokenized): what it derives from the ids and the mask."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from packer.core.formats.tokenized import examples_table


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.booleans(), max_size=7), max_size=9))
def test_prompt_len_is_each_examples_tokens_before_its_first_trained_one(examples):
    """prompt_len: per example, how many tokens come before its first loss token (all of them when it has
    none), whatever the runs of the mask and however short the examples (empty ones, a batch with no loss)."""
    n = len(examples)
    lengths = np.array([len(e) for e in examples], np.int64)
    loss = np.array([x for e in examples for x in e], np.uint8)
    table = examples_table(np.arange(n), np.zeros(n, np.int32), np.arange(n), lengths,
                           np.zeros(int(lengths.sum()), np.uint32), loss)
    expect = [next((i for i, x in enumerate(e) if x), len(e)) for e in examples]
    assert table.column("prompt_len").to_pylist() == expect
