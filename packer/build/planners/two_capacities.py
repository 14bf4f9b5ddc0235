"""First-fit decreasing over two capacities: tokens (pack_len) and vision patches (max_patches).

Runs with images bound each pack's vision patches too, so the vision encoder's batch is bounded. Items are
taken in a stable descending order of tokens (then patches); each goes to the oldest pack where both its
tokens and its patches fit, else opens a pack. No I/O; numpy over the open packs per item, which is fine
for the example counts vision datasets have (one vectorized scan of the open packs an item).
"""

from __future__ import annotations

import numpy as np


def first_fit_two(lengths: np.ndarray, patches: np.ndarray, pack_len: int, max_patches: int,
                  max_segments: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(order, offsets) of items packed under both capacities (each item must fit alone)."""
    lengths = np.asarray(lengths, np.int64)
    patches = np.asarray(patches, np.int64)
    n = len(lengths)
    if n and (lengths.max() > pack_len or patches.max() > max_patches):
        raise ValueError("an item exceeds a capacity on its own")
    items = np.lexsort((-patches, -lengths))  # descending tokens, then patches; stable
    room_t = np.empty(n, np.int64)
    room_p = np.empty(n, np.int64)
    count = np.zeros(n, np.int64)
    where = np.empty(n, np.int64)
    packs = 0
    for i in items.tolist():
        fits = (room_t[:packs] >= lengths[i]) & (room_p[:packs] >= patches[i])
        if max_segments is not None:
            fits &= count[:packs] < max_segments
        hit = np.flatnonzero(fits)
        if hit.size:
            p = int(hit[0])
        else:
            p = packs
            room_t[p], room_p[p] = pack_len, max_patches
            packs += 1
        room_t[p] -= lengths[i]
        room_p[p] -= patches[i]
        count[p] += 1
        where[i] = p
    # order: packs in opening order, each pack's items in placement order
    placed = np.empty(n, np.int64)
    placed[items] = np.arange(n)
    order = np.lexsort((placed, where))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(where, minlength=packs))]).astype(np.int64)
    return order.astype(np.int64), offsets


__all__ = ["first_fit_two"]
