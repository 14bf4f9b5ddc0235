"""First-fit decreasing over two capacities: tokens (pack_len) and vision patches (max_patches).

Runs with images bound each pack's vision patches too, so the vision encoder's batch is bounded. Items are
taken in a stable descending order of tokens (then patches); each goes to the oldest pack where both its
tokens and its patches fit, else opens a pack. No I/O; numpy over the open packs per item, which is fine
for the example counts vision datasets have (one vectorized scan of the open packs an item).
"""

from __future__ import annotations

import numpy as np

from packer.build.planners.even import even


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


def even_patches(order: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, patches: np.ndarray, pack_len: int,
                 max_patches: int, max_segments: int | None = None, rounds: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The same packs with their vision patches evened out (packer.build.planners.even, with patches as the work
    and max_patches as a second capacity); when no swap is left, a text-only item of one of the low packs moves
    to the pack with the most token room (once per item), so a low pack can take an image from a high one; until
    neither is left. The number of packs and every item stay; so the loader's steps of few packs get near-equal
    vision work. Deterministic."""
    lengths = np.asarray(lengths, np.int64)
    patches = np.asarray(patches, np.int64)
    moved: set[int] = set()  # text-only items moved to make room move once

    def stuck(packs: list[list[int]], tok: np.ndarray, low: np.ndarray) -> bool:
        return _make_room(packs, low.tolist(), tok, lengths, patches, pack_len, max_segments, moved)

    return even(order, offsets, lengths, patches, pack_len, max_segments=max_segments,
                second=(patches, max_patches), rounds=rounds, stuck=stuck)


def _make_room(packs: list[list[int]], low: list[int], tok: np.ndarray, lengths: np.ndarray, patches: np.ndarray,
               pack_len: int, max_segments: int | None, moved: set[int]) -> bool:
    """Move the longest text-only (no patches) item of a low pack, not moved before, to the pack with the most
    token room that takes it; True when one moved."""
    room = pack_len - tok
    for lo in low:
        if len(packs[lo]) < 2:
            continue  # its last item: moving it would leave an empty pack
        items = [i for i in packs[lo] if patches[i] == 0 and i not in moved]
        for x in sorted(items, key=lambda i: (-int(lengths[i]), i)):
            fits = np.flatnonzero(room >= lengths[x])
            fits = fits[fits != lo]
            if max_segments is not None:
                fits = np.array([q for q in fits.tolist() if len(packs[q]) < max_segments], np.int64)
            if not len(fits):
                continue
            q = int(fits[np.argmax(room[fits])])
            packs[lo].remove(x)
            packs[q].append(x)
            tok[lo] -= lengths[x]
            tok[q] += lengths[x]
            moved.add(x)
            return True
    return False
