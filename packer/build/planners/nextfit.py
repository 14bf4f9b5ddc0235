"""Next fit: items in input order, one open pack, a new pack when the next item does not fit.

The baseline the reports compare against (what streaming packers do): the fastest and the most
wasteful of the planners, and the only one that keeps the input order.
"""

from __future__ import annotations

import numpy as np

from packer.build.planners.base import Packing


def nextfit(lengths: np.ndarray, pack_len: int, max_segments: int | None = None) -> Packing:
    """Fill packs in input order; open a new one when the next item does not fit.

    The baseline the reports compare against (what naive streaming packers do). O(n) memory;
    one binary search per pack, not per item.
    """
    n = len(lengths)
    cs = np.cumsum(lengths, dtype=np.int64)
    starts = []
    i = 0
    # One iteration per pack (about n / mean items per pack); each is a binary search.
    while i < n:
        base = cs[i - 1] if i else 0
        j = int(np.searchsorted(cs, base + pack_len, side="right"))
        if max_segments is not None:
            j = min(j, i + max_segments)
        starts.append(i)
        i = j
    starts.append(n)
    return np.arange(n, dtype=np.int64), np.asarray(starts, dtype=np.int64)
