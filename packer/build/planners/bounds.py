"""Lower bounds on the number of packs any plan needs: how far a plan is from the best possible."""

from __future__ import annotations

import numpy as np


def l1_bound(lengths: np.ndarray, pack_len: int) -> int:
    """ceil(total tokens / pack_len): no plan can do with fewer packs."""
    return int(-(-int(np.sum(lengths, dtype=np.int64)) // pack_len))


def l2_bound(lengths: np.ndarray, pack_len: int) -> int:
    """Martello and Toth's L2 bound, for every threshold alpha in [0, pack_len / 2] at once.

    For alpha, items over pack_len - alpha (N1) and items over pack_len / 2 (N2) each need a pack
    of their own; items in [alpha, pack_len / 2] (N3) must fit in the room N2 leaves, else they need
    more packs. L2 >= L1 and is tight far more often on long-tailed length distributions.
    """
    L = int(pack_len)
    hist = np.bincount(np.asarray(lengths, dtype=np.int64), minlength=L + 1)[: L + 1]
    sizes = np.arange(L + 1, dtype=np.int64)
    cnt_le = np.cumsum(hist)
    sum_le = np.cumsum(hist * sizes)
    n = int(cnt_le[-1])
    half = L // 2
    alpha = np.arange(0, half + 1)
    n1 = n - cnt_le[L - alpha]
    n2 = cnt_le[L - alpha] - cnt_le[half]
    s2 = sum_le[L - alpha] - sum_le[half]
    below = np.where(alpha > 0, sum_le[np.maximum(alpha - 1, 0)], 0)
    s3 = sum_le[half] - below
    extra = -(-(s3 - (n2 * L - s2)) // L)
    return int(np.max(n1 + n2 + np.maximum(extra, 0)))


def lower_bound(lengths: np.ndarray, pack_len: int) -> int:
    """The larger of L1 and L2."""
    if len(lengths) == 0:
        return 0
    return max(l1_bound(lengths, pack_len), l2_bound(lengths, pack_len))
