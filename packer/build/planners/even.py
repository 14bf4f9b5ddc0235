"""Evening a packing's work: the same packs, the same items, each pack's work as near the mean as swaps allow.

A bin packer fills packs as full as it can and leaves what is left over in its last packs: on long-example
data one pack of a few hundred holds a third of the tokens of the others, and every step that deals it waits
on the ranks with full packs. The loader can only deal the packs it is given, so the plan evens them: repeat,
between one of the heaviest packs and one of the lightest (heaviest against lightest first), the swap of two
items (or the move of one) that brings the two packs' work closest together, while both stay within
pack_len tokens (and max_segments); until no pair of those gains. The number of packs and every item stay.

An item's work is additive (its tokens, or its tokens plus an attention weight x L^2 / 2), so a pack's work is
the sum over its items. Deterministic: the same packing and work give the same result; bounded by `rounds`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CANDIDATES = 16
"""Packs tried on each side each round: the heaviest and the lightest few, so a round costs a few small
matrix scans whatever the number of packs."""


def even(order: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, work: np.ndarray, pack_len: int, *,
         max_segments: int | None = None, second: tuple[np.ndarray, int] | None = None, rounds: int | None = None,
         stuck: Callable[[list[list[int]], np.ndarray, np.ndarray], bool] | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """(order, offsets) with the packs' `work` evened out (see the module docstring).

    lengths: int [n] tokens per item (pack_len bounds each pack); work: float or int [n] per item, > 0.
    second: (values [n], cap): another per-pack capacity every move keeps (vision patches), or None.
    stuck(packs, tokens, lightest): called when no swap or pull gains; True when it moved items (then the
    search goes on). rounds: the most changes (default 20 x packs + 100); pulls (a scan of every item each)
    are bounded by 64 + 5e7 / items of them (about a second's work at any size)."""
    ev = _Evening(order, offsets, lengths, work, pack_len, max_segments, second)
    n = len(ev.packs)
    if n < 2:
        return order, offsets
    k = min(CANDIDATES, n)
    pulls = 64 + 50_000_000 // max(1, len(order))
    for _ in range(rounds if rounds is not None else 20 * n + 100):
        by = np.argsort(ev.load, kind="stable") if n <= 4 * k else _extremes(ev.load, k)
        done = any(ev.swap(hi, lo) for hi in by[::-1][:k].tolist() for lo in by[:k].tolist())
        if not done and pulls > 0:  # no pair of the extremes gains: the lightest takes the best item of any pack
            pulls -= 1
            done = ev.pull(int(by[0]))
        if not done and stuck is not None and stuck(ev.packs, ev.tok, by[:k]):
            ev.recount()
            done = True
        if not done:
            break
    order = np.array([i for p in ev.packs for i in p], np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in ev.packs])]).astype(np.int64)
    return order, offsets


def _extremes(load: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k lightest (ascending) then the k heaviest (ascending) packs, ties by index: exactly the two
    ends of a stable argsort, without sorting the middle. (np.argpartition alone would pick among tied packs by
    the CPU's code path, and the plan must be the same on every machine.)"""
    n = len(load)
    lo_v, hi_v = np.partition(load, (k - 1, n - k))[[k - 1, n - k]]
    low = np.flatnonzero(load <= lo_v)
    low = low[np.lexsort((low, load[low]))][:k]
    high = np.flatnonzero(load >= hi_v)
    high = high[np.lexsort((high, load[high]))][-k:]
    return np.concatenate([low, high])


class _Evening:
    """The packs being evened: their items, tokens, work and second measure, and where each item is."""

    def __init__(self, order: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, work: np.ndarray,
                 pack_len: int, max_segments: int | None, second: tuple[np.ndarray, int] | None):
        self.lengths = np.asarray(lengths, np.int64)
        self.work = np.asarray(work)
        self.pack_len, self.max_segments = pack_len, max_segments
        self.extra, self.cap = (np.asarray(second[0], np.int64), int(second[1])) if second is not None else (None, 0)
        self.packs = [order[a:b].tolist() for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
        self.ids = np.asarray(order, np.int64)
        self.where = np.zeros(len(self.lengths), np.int64)
        self.where[self.ids] = np.repeat(np.arange(len(self.packs)), np.diff(offsets))
        self.recount()

    def recount(self) -> None:
        """Per pack: tokens, work, second measure, from the packs' items."""
        self.tok = np.array([int(self.lengths[p].sum()) for p in self.packs], np.int64)
        self.load = np.array([self.work[p].sum() for p in self.packs], self.work.dtype)
        self.ext = None if self.extra is None else np.array([int(self.extra[p].sum()) for p in self.packs], np.int64)
        for q, p in enumerate(self.packs):
            self.where[p] = q

    def _fits(self, ok: np.ndarray, hi_items, lo_items, hi: np.ndarray | int, lo: int, real) -> np.ndarray:
        """ok narrowed to the exchanges (hi_items to pack lo, lo_items to pack hi) within every capacity."""
        L, tok = self.lengths, self.tok
        ok &= (tok[hi] - L[hi_items] + L[lo_items] * real <= self.pack_len) & \
            (tok[lo] - L[lo_items] * real + L[hi_items] <= self.pack_len)
        if self.max_segments is not None:
            ok &= real | (len(self.packs[lo]) < self.max_segments)
        if self.extra is not None:
            e = self.extra
            ok &= (self.ext[hi] - e[hi_items] + e[lo_items] * real <= self.cap) & \
                (self.ext[lo] - e[lo_items] * real + e[hi_items] <= self.cap)
        return ok

    def swap(self, hi: int, lo: int) -> bool:
        """Do the best swap of an item of pack hi with one of pack lo (or a move of one from hi): the one whose
        work difference is nearest half the gap, within the capacities; True when one gained."""
        gap = self.load[hi] - self.load[lo]
        if hi == lo or not gap > 0:
            return False
        a = np.asarray(self.packs[hi], np.int64)[:, None]
        b = np.asarray(self.packs[lo] + [a[0, 0]], np.int64)[None, :]  # the last column: a move, no partner
        real = np.ones(b.shape, bool)
        real[0, -1] = False
        delta = self.work[a] - self.work[b] * real
        gain = np.minimum(delta, gap - delta)
        gain = np.where(self._fits(gain > 0, a, b, hi, lo, real), gain, 0)
        best = int(np.argmax(gain))
        if not gain.flat[best] > 0:
            return False
        i, j = divmod(best, b.shape[1])
        self._move(int(a[i, 0]), hi, lo)
        if real[0, j]:
            self._move(int(b[0, j]), lo, hi)
        return True

    def pull(self, lo: int) -> bool:
        """Move into pack lo the item of any other pack that brings the two packs' work closest together (one
        vectorized scan of every item); True when one gained."""
        ids = self.ids
        where = self.where[ids]
        delta = self.work[ids]
        gain = np.minimum(delta, self.load[where] - self.load[lo] - delta)
        ok = self._fits((where != lo) & (gain > 0), ids, ids, where, lo, np.zeros(len(ids), bool))
        gain = np.where(ok, gain, 0)
        best = int(np.argmax(gain)) if len(gain) else 0
        if not len(gain) or not gain[best] > 0:
            return False
        self._move(int(ids[best]), int(where[best]), lo)
        return True

    def _move(self, x: int, src: int, dst: int) -> None:
        self.packs[src].remove(x)
        self.packs[dst].append(x)
        self.where[x] = dst
        self.tok[src] -= self.lengths[x]
        self.tok[dst] += self.lengths[x]
        self.load[src] -= self.work[x]
        self.load[dst] += self.work[x]
        if self.extra is not None:
            self.ext[src] -= self.extra[x]
            self.ext[dst] += self.extra[x]


__all__ = ["even"]
