"""First-fit and best-fit decreasing: the one-pass heuristics over integer lengths. No I/O.

Each function takes lengths (int array, each in 1..pack_len) and returns a Packing (order, offsets;
packer.build.planners.base). Trade-off: within a fraction of a percent of the optimum on real SFT data
and 10M items in under a second, but no proof; ffd is slightly faster, bfd slightly tighter.

FFD and BFD are the exact textbook algorithms with fixed ties: items are taken in a stable
descending sort (equal lengths keep input order); first fit takes the oldest pack with room; best
fit takes the pack with the least room that still fits and, among packs with equally little room,
the one that has had that room longest (first in, first out: the rule TRL's BFD follows, so the
packs are the same as TRL's on the whole dataset). They run over
runs of packs, not items: packs opened together with the same contents behave identically, so a
whole run receives a length class at once. Equal-length items are placed as a block, which makes
the work proportional to (length classes x runs touched), not to the number of items.
"""

from __future__ import annotations

import numpy as np

from packer.build.planners.base import Packing


def _classes(lengths: np.ndarray, pack_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable descending order of items, and the distinct lengths (descending) with their counts."""
    lengths = np.asarray(lengths, dtype=np.int64)
    key = pack_len - lengths  # ascending key == descending length; small ints sort by radix
    key = key.astype(np.uint16 if pack_len < 2**16 else np.uint32)
    order = np.argsort(key, kind="stable")
    hist = np.bincount(lengths, minlength=pack_len + 1)
    sizes = np.flatnonzero(hist)[::-1]
    return order, sizes, hist[sizes]


class _Events:
    """Placements recorded as blocks, in placement order: the next npacks*k items of the sorted order
    go k per pack to packs first..first+npacks-1, which already held `before` items each (a block's
    position in the sorted order is implied by the blocks before it, so it is not stored)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, int]] = []

    def add(self, first: int, npacks: int, k: int, before: int) -> None:
        self.rows.append((first, npacks, k, before))

    def expand(self, order_sorted: np.ndarray, num_packs: int) -> Packing:
        """Whole-array expansion of the blocks into (order, offsets).

        Blocks were recorded in placement order, so together they cover the sorted items front to
        back; each pack-sized piece of a block lands at its pack's offset plus the items the pack
        already held. Work is one pass over the items plus one over (pack, block) pairs.
        """
        n = len(order_sorted)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(1, np.int64)
        ev = np.asarray(self.rows, dtype=np.int64)
        first, npacks, k, before = ev[:, 0], ev[:, 1], ev[:, 2], ev[:, 3]
        # One piece per (event, pack): k items to pack p, after `before` items already there.
        piece_pack = np.repeat(first - (np.cumsum(npacks) - npacks), npacks) + np.arange(int(npacks.sum()))
        piece_k = np.repeat(k, npacks)
        piece_before = np.repeat(before, npacks)
        offsets = np.zeros(num_packs + 1, dtype=np.int64)
        np.cumsum(np.bincount(piece_pack, weights=piece_k, minlength=num_packs).astype(np.int64),
                  out=offsets[1:])
        dest_start = offsets[piece_pack] + piece_before
        # dest = each piece's destination run, as one cumulative sum of +1 steps and jumps at piece
        # starts; int32 halves the memory traffic that dominates at 1e7 items.
        idx = np.int32 if n < 2**31 else np.int64
        step = np.ones(n, dtype=idx)
        starts = np.cumsum(piece_k) - piece_k
        jump = np.diff(dest_start, prepend=np.int64(1)) - np.concatenate([[0], piece_k[:-1]]) + 1
        step[starts] = jump.astype(idx)
        dest = np.cumsum(step, dtype=idx)
        order = np.empty(n, dtype=np.int64)
        order[dest] = order_sorted
        return order, offsets


def _open_new(events: _Events, rem: int, s: int, pack_len: int, cap: int,
              next_pack: int) -> tuple[list[tuple[int, int, int, int]], int]:
    """Open packs for `rem` items of length s: full ones (as one run) and at most one partial.

    Returns the new runs as (first_pack, npacks, free, items) and the next pack number.
    """
    k = min(pack_len // s, cap)
    runs = []
    full = rem // k
    if full:
        events.add(next_pack, full, k, 0)
        runs.append((next_pack, full, pack_len - k * s, k))
        next_pack += full
        rem -= full * k
    if rem:
        events.add(next_pack, 1, rem, 0)
        runs.append((next_pack, 1, pack_len - rem * s, rem))
        next_pack += 1
    return runs, next_pack


def bfd(lengths: np.ndarray, pack_len: int, max_segments: int | None = None) -> Packing:
    """Best-fit decreasing: each item to the open pack with the least room that fits; on ties, the
    pack that reached that room first.

    Runs are kept in buckets by free room, in order of arrival. For a length s, the pack with the least room f >= s takes
    floor(f / s) items in a row (its room then drops below s), so packs are served bucket by bucket.
    """
    order_sorted, sizes, counts = _classes(lengths, pack_len)
    cap = max_segments or len(lengths) + 1
    smin = int(sizes[-1]) if len(sizes) else 1
    buckets: dict[int, list[list[int]]] = {}  # free -> runs [first_pack, npacks, items], by arrival
    nonempty = np.zeros(pack_len + 1, dtype=bool)
    events = _Events()
    next_pack = 0

    def put(first: int, npacks: int, free: int, items: int) -> None:
        if free < smin or items >= cap:  # can never take another item: closed
            return
        buckets.setdefault(free, []).append([first, npacks, items])  # arrival order
        nonempty[free] = True

    for s, c in zip(sizes.tolist(), counts.tolist()):
        taken = 0
        # Buckets with room >= s, least room first (one vectorized scan per length class).
        for f in (np.flatnonzero(nonempty[s:]) + s).tolist():
            runs = buckets.pop(f)
            nonempty[f] = False
            kf = f // s
            i = 0
            while i < len(runs) and taken < c:
                first, npk, items = runs[i]
                k = min(kf, cap - items)
                full = min(npk, (c - taken) // k)
                if full:
                    events.add(first, full, k, items)
                    taken += full * k
                    put(first, full, f - k * s, items + k)
                left = npk - full
                if left and taken < c:  # fewer than k items remain: one pack takes them, class done
                    rem = c - taken
                    events.add(first + full, 1, rem, items)
                    taken += rem
                    put(first + full, 1, f - rem * s, items + rem)
                    first, left = first + full + 1, left - 1
                    if left:
                        runs[i] = [first, left, items]
                        i -= 1
                elif left:
                    runs[i] = [first + full, left, items]
                    i -= 1
                i += 1
            if i < len(runs):  # untouched runs keep their room; moves only went to smaller rooms
                buckets[f] = runs[i:]
                nonempty[f] = True
            if taken == c:
                break
        if taken < c:
            new, next_pack = _open_new(events, c - taken, s, pack_len, cap, next_pack)
            for first, npk, free, items in new:
                put(first, npk, free, items)
    return events.expand(order_sorted, next_pack)


def ffd(lengths: np.ndarray, pack_len: int, max_segments: int | None = None) -> Packing:
    """First-fit decreasing: each item to the oldest open pack with room.

    Runs live in arrays ordered by age; for a length s the runs with room are found in one
    vectorized pass and served oldest first, each pack taking floor(room / s) items in a row.
    """
    order_sorted, sizes, counts = _classes(lengths, pack_len)
    cap = max_segments or len(lengths) + 1
    first = np.zeros(0, np.int64)
    npk = np.zeros(0, np.int64)
    free = np.zeros(0, np.int64)
    items = np.zeros(0, np.int64)
    events = _Events()
    next_pack = 0
    for s, c in zip(sizes.tolist(), counts.tolist()):
        taken = 0
        split: tuple[int, list[tuple[int, int, int, int]]] | None = None
        for j in np.flatnonzero((free >= s) & (items < cap)).tolist():
            k = min(int(free[j]) // s, cap - int(items[j]))
            n_j = int(npk[j])
            full = min(n_j, (c - taken) // k)
            if full == n_j:  # the whole run takes k items each
                events.add(int(first[j]), full, k, int(items[j]))
                taken += full * k
                free[j] -= k * s
                items[j] += k
                if taken == c:
                    break
                continue
            # The class runs out inside this run: split it into done / partial / untouched packs.
            f0, it0, parts = int(first[j]), int(items[j]), []
            if full:
                events.add(f0, full, k, it0)
                taken += full * k
                parts.append((f0, full, int(free[j]) - k * s, it0 + k))
            rem = c - taken
            if rem:
                events.add(f0 + full, 1, rem, it0)
                taken += rem
                parts.append((f0 + full, 1, int(free[j]) - rem * s, it0 + rem))
            done = full + (1 if rem else 0)
            if n_j - done:
                parts.append((f0 + done, n_j - done, int(free[j]), it0))
            split = (j, parts)
            break
        new: list[tuple[int, int, int, int]] = []
        if taken < c:
            new, next_pack = _open_new(events, c - taken, s, pack_len, cap, next_pack)
        if split is not None or new:
            runs = np.stack([first, npk, free, items], axis=1)
            if split is not None:
                j, parts = split
                runs = np.concatenate([runs[:j], np.asarray(parts, np.int64).reshape(-1, 4), runs[j + 1:]])
            if new:
                runs = np.concatenate([runs, np.asarray(new, np.int64).reshape(-1, 4)])
            alive = (runs[:, 2] >= int(sizes[-1])) & (runs[:, 3] < cap)
            first, npk, free, items = (np.ascontiguousarray(a) for a in runs[alive].T)
    return events.expand(order_sorted, next_pack)
