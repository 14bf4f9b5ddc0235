"""Planners: interchangeable bin-packing algorithms over an int array of lengths, and `plan()`.

Every algorithm in ALGORITHMS has one signature and returns a packing (packer.build.planners.base)
plus whether it proved the packing optimal::

    fn(lengths, pack_len, *, seed, max_segments, time_limit) -> (order, offsets, optimal)

    nextfit   nextfit.py          input order, one open pack: the baseline
    ffd, bfd  fit_decreasing.py   sorted one-pass heuristics: 10M items in under a second
    ortools   ortools.py          bfd, exact refill and CP-SAT under a deterministic work budget (default)
    bounds.py                     the lower bound every plan is measured against

A new algorithm is one module here plus one line in ALGORITHMS; the CLI's --algorithm choices come
from ALGORITHMS. No I/O: the plan stage (packer.build.plan) reads and writes the files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from packer.build.planners import fit_decreasing, nextfit
from packer.build.planners.base import Packing
from packer.build.planners.bounds import lower_bound
from packer.core.context_parallel import check_cp_size, padded_lengths
from packer.core.errors import ConfigError

Algorithm = Callable[..., "tuple[np.ndarray, np.ndarray, bool | None]"]


def _heuristic(fn: Callable[..., Packing]) -> Algorithm:
    def run(lengths: np.ndarray, pack_len: int, *, seed: int, max_segments: int | None,
            time_limit: float | None) -> tuple[np.ndarray, np.ndarray, bool | None]:
        order, offsets = fn(lengths, pack_len, max_segments)
        return order, offsets, None

    run.__doc__ = fn.__doc__
    return run


def _lazy_ortools(lengths: np.ndarray, pack_len: int, **kw) -> tuple[np.ndarray, np.ndarray, bool | None]:
    """See packer.build.planners.ortools (imported on use: OR-Tools is heavy to import)."""
    from packer.build.planners.ortools import ortools_plan

    return ortools_plan(lengths, pack_len, **kw)


ALGORITHMS: dict[str, Algorithm] = {
    # nextfit: input order, one open pack; the baseline (what streaming packers do).
    "nextfit": _heuristic(nextfit.nextfit),
    # ffd: sorted, oldest pack that fits; within a fraction of a percent of bfd, slightly faster.
    "ffd": _heuristic(fit_decreasing.ffd),
    # bfd: sorted, tightest pack that fits; the usual choice, 10M items in under a second.
    "bfd": _heuristic(fit_decreasing.bfd),
    # ortools (the default): bfd, then exact subset-sum refill and CP-SAT; reaches the lower bound on
    # real SFT data in well under a second up to ~1e5 items; slower per item, bounded by a deterministic
    # work budget that grows with the number of items (packer.build.planners.ortools.default_budget).
    "ortools": _lazy_ortools,
}


@dataclass(frozen=True)
class Plan:
    """A packing of items into packs of at most `pack_len` tokens.

    Example, lengths [3, 4, 1] at pack_len 4 with bfd::

        order   = [1, 0, 2]      pack 0: item 1 (4 tokens); pack 1: items 0, 2 (3 + 1 tokens)
        offsets = [0, 1, 3]
    """

    order: np.ndarray
    """int64 [n]: item indices, pack by pack."""
    offsets: np.ndarray
    """int64 [num_packs + 1]: pack p holds order[offsets[p]:offsets[p+1]]."""
    pack_len: int
    lower_bound: int
    """max(L1, L2): no plan can use fewer packs."""
    optimal: bool | None
    """True when proven optimal (the plan meets the lower bound), None when not proven: no algorithm
    here can prove a plan above the bound optimal, so there is no False."""
    algorithm: str
    seconds: float
    time_limit: float | None = None

    @property
    def num_packs(self) -> int:
        return len(self.offsets) - 1

    @property
    def gap(self) -> float:
        """(packs - lower_bound) / lower_bound: the most this plan can be above the optimum."""
        return (self.num_packs - self.lower_bound) / max(1, self.lower_bound)

    def packs(self) -> list[np.ndarray]:
        """The item indices of each pack (for inspection; the arrays are the fast path)."""
        return [self.order[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def pack_tokens(self, lengths: np.ndarray) -> np.ndarray:
        """int64 [num_packs]: tokens in each pack."""
        return np.add.reduceat(np.asarray(lengths, np.int64)[self.order], self.offsets[:-1]) \
            if len(self.order) else np.zeros(0, np.int64)


def _check_time_limit(algorithm: str, time_limit: float | None) -> None:
    if time_limit is not None and algorithm != "ortools":
        raise ConfigError(f"time_limit applies to the ortools planner only; {algorithm} would ignore it: drop "
                          "it or choose algorithm 'ortools'")
    if time_limit is not None and not time_limit >= 0:
        raise ConfigError(f"time_limit must be a number of seconds >= 0 or None; got {time_limit!r}")


def plan(lengths: np.ndarray, pack_len: int, algorithm: str = "ortools", *, seed: int = 0,
         max_segments: int | None = None, time_limit: float | None = None, cp_size: int = 1) -> Plan:
    """Pack items of the given lengths (each 1..pack_len) into as few packs as the algorithm can.

    cp_size N > 1 plans for context parallelism: every item occupies its length rounded up to a multiple
    of 2N (packer.core.context_parallel), so each of N ranks can hold a whole, balanced share of every pack;
    pack_len must be divisible by 2N.

    Raises ValueError for lengths outside 1..pack_len (apply the over-long policy first) and
    ConfigError for an unknown algorithm.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or (lengths.size and not np.issubdtype(lengths.dtype, np.integer)):
        raise ValueError("lengths must be a 1-D integer array")
    lengths = lengths.astype(np.int64, copy=False)
    if lengths.size and (lengths.min() < 1 or lengths.max() > pack_len):
        bad = int(np.flatnonzero((lengths < 1) | (lengths > pack_len))[0])
        raise ValueError(f"lengths must be in 1..{pack_len}; item {bad} has length {int(lengths[bad])} "
                         "(apply an over-long policy first: truncate, drop or split)")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm '{algorithm}'; choose one of {', '.join(ALGORITHMS)}")
    _check_time_limit(algorithm, time_limit)
    if cp_size != 1:
        check_cp_size(pack_len, cp_size)
        lengths = padded_lengths(lengths, cp_size)  # what each item occupies in a CP pack
    if algorithm == "ortools" and time_limit is None:
        from packer.build.planners.ortools import default_budget

        time_limit = default_budget(len(lengths))  # stated in the plan, so the report says what was spent
    t0 = time.perf_counter()
    order, offsets, optimal = ALGORITHMS[algorithm](
        lengths, pack_len, seed=seed, max_segments=max_segments, time_limit=time_limit)
    seconds = time.perf_counter() - t0
    lb = lower_bound(lengths, pack_len)
    if max_segments is not None and len(lengths):
        lb = max(lb, -(-len(lengths) // max_segments))
    if optimal is None and len(offsets) - 1 == lb:
        optimal = True  # meeting the lower bound proves it
    return Plan(order, offsets, int(pack_len), lb, optimal, algorithm, seconds, time_limit)


__all__ = ["ALGORITHMS", "Plan", "plan"]
