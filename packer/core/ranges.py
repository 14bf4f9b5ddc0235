"""Whole-array helpers for runs of consecutive integers (the index arithmetic every stage needs)."""

from __future__ import annotations

import numpy as np


def within(lengths: np.ndarray) -> np.ndarray:
    """int64: 0..n-1 for each run length n, concatenated. within([3, 2]) == [0, 1, 2, 0, 1]."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """int64: start..start+n-1 for each (start, n), concatenated. concat_ranges([5, 0], [2, 3]) == [5, 6, 0, 1, 2]."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.repeat(np.asarray(starts, dtype=np.int64), lengths) + within(lengths)
