"""The optimizing planner: start from best-fit decreasing, refill packs exactly, prove what it can.

Real SFT length distributions have many small items, so a plan at the lower bound usually exists;
the slack it allows is tiny (GSM8K at 1024: 374 tokens over 1,325 packs), so nearly every pack must
be filled to the token. Steps, all within `time_limit`:

1. BFD. If it meets the lower bound, it is optimal: done.
2. Exact refill of the residual: the items of BFD's packs that are not exactly full are re-packed,
   one pack at a time around the largest remaining item, its room filled by an exact subset sum
   over the remaining length histogram (a bitset dynamic program over lengths, not items). If that
   misses the bound and time remains, every item is refilled the same way. Measured here: the lower
   bound on GSM8K (GPT-2, Alpaca) at 1024, 2048 and 4096 in under 0.1 s, and on 1M lognormal
   lengths at 4096 in about 4 s.
3. On the fewest-filled packs of the result, OR-Tools CP-SAT tries to fit their items into one pack
   fewer (a small exact model), repeatedly, while time remains.

Never worse than BFD: the better of the two plans is returned. `optimal` is True when the plan meets
the lower bound, else None (not proven); the plan's gap to the bound says how far it may be.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import numpy as np

from packer.build.planners import fit_decreasing as binpack
from packer.build.planners.bounds import lower_bound
from packer.core.ranges import concat_ranges



# The search's constants. `python benchmarks/bench_plan.py --constants` prints the measurements behind
# them (2-core reference machine, idle; under load the same work takes 2-4x the wall time, which is
# why the budget counts work and never reads the clock).
CELLS_PER_SECOND = 4e9  # subset-sum cells (bool entries) a second: fitted 4.3e9 idle, 1.1e9 under load
STEP_SECONDS = 5e-6  # one subset-sum step (a numpy round) beyond its cells: fitted 4.7e-6 s idle
CALL_SECONDS = 1e-4  # one subset sum's setup (binary splitting, rebuild): fitted 1.2e-4 s idle
CPSAT_CALL_SECONDS = 2.0  # deterministic seconds one CP-SAT merge may use (the easy merges measured use < 0.01)
MIN_CHARGE = 1e-3  # least a CP-SAT call costs the budget (model building: ~1e-3 s measured at 20 items)
GROUP_MIN, GROUP_MAX = 3, 8  # packs merged at a time: merging 2 saved a pack in 1 of 5 cases, 3 in 4 of 5;
# GROUP_MAX and MAX_MODEL_ITEMS cap the model's size (a 12-pack, ~100-item merge still took 0.04 s: a guard
# against models too big for the budget, not a measured optimum)
MAX_MODEL_ITEMS = 200
POOL = 256  # the emptiest packs CP-SAT merges choose among
BUDGET_PER_ITEM = 1e-5  # default budget per length: 1e6 lengths get 11 s (the refill reached the bound in ~8)
BUDGET_MAX = 300.0  # the default's cap: 1e8 lengths and more plan in a few minutes of work

Packs = tuple[np.ndarray, np.ndarray]
"""(slots int32, offsets int64): pack p holds the lengths slots[offsets[p]:offsets[p+1]]."""


class _Budget:
    """A deterministic time budget: work is counted, never timed, so the plan never depends on the
    machine's speed or load. The refill charges its subset-sum cells at CELLS_PER_SECOND; CP-SAT is
    given the rest as max_deterministic_time and charged the deterministic time it reports."""

    def __init__(self, seconds: float):
        self.left = float(seconds)

    def charge(self, seconds: float) -> None:
        self.left -= seconds

    def spent(self) -> bool:
        return self.left <= 0


def _subset_sum(room: int, lengths: list[int], counts: list[int], budget: _Budget) -> list[int]:
    """Lengths (with repeats) summing as close to `room` as possible, exactly when reachable.

    Bounded multiplicities by binary splitting (1, 2, 4, ... copies as one 0/1 item). The reachable sums
    are the bits of one Python int, and each item's step is `reach | reach << w` (a few word operations
    per 64 sums, in C); the int after each item is kept, so the subset is rebuilt from the item that first
    reached each sum (a binary search over those ints), the same subset an array per item would give.
    """
    budget.charge(CALL_SECONDS)
    full = (1 << (room + 1)) - 1
    reach, after, used = 1, [], []  # after[k]: the sums reachable once item used[k] (length, copies) is in
    for v, m in _split(room, lengths, counts):  # split as far as the sums need: most stop after a few items
        w = v * m
        if w > room:
            continue
        budget.charge((room + 1 - w) / CELLS_PER_SECOND + STEP_SECONDS)  # the work an array of sums would do
        reach = (reach | (reach << w)) & full
        after.append(reach)
        used.append((v, m))
        if reach >> room & 1:
            break
    s = reach.bit_length() - 1
    out: list[int] = []
    while s > 0:  # one step per item of the subset
        lo, hi = 0, len(after) - 1
        while lo < hi:  # the first item after which sum s is reachable
            mid = (lo + hi) // 2
            if after[mid] >> s & 1:
                hi = mid
            else:
                lo = mid + 1
        v, m = used[lo]
        out.extend([v] * m)
        s -= v * m
    return out


def _split(room: int, lengths: list[int], counts: list[int]) -> Iterator[tuple[int, int]]:
    """Bounded multiplicities by binary splitting: (length, 1, 2, 4, ... copies) as 0/1 items, each length's
    copies capped at what fits in `room`. A generator: the subset sum takes only as many as it uses."""
    for v, c in zip(lengths, counts):
        c = min(c, room // v)
        m = 1
        while c > 0:
            take = min(m, c)
            yield v, take
            c -= take
            m *= 2


class _Histogram:
    """Remaining items by length: counts and a sorted list of the lengths still available."""

    def __init__(self, lengths: np.ndarray, pack_len: int):
        self.counts = np.bincount(lengths, minlength=pack_len + 1).tolist()
        self.avail = [v for v in range(1, pack_len + 1) if self.counts[v]]
        self.left = len(lengths)

    def take(self, v: int, k: int = 1) -> None:
        self.counts[v] -= k
        self.left -= k
        if self.counts[v] == 0:
            self.avail.pop(bisect.bisect_left(self.avail, v))

    def largest_at_most(self, room: int) -> int | None:
        i = bisect.bisect_right(self.avail, room)
        return self.avail[i - 1] if i else None


def _refill(lengths: np.ndarray, pack_len: int, cap: int, budget: _Budget) -> Packs:
    """Packs opened around the largest remaining item and closed by an exact subset sum of the remaining
    histogram (largest lengths tried first, so small items stay free for later packs).

    When the budget runs out part way, the items left are packed by BFD, so a budget too small for the
    data still improves the plan as far as it reached. Memory: the lengths' own size (an int32 slot per
    item and one per pack) plus the histogram, whatever the number of items."""
    h = _Histogram(lengths, pack_len)
    slots = np.empty(len(lengths), dtype=np.int32)  # the packs' lengths, pack after pack
    sizes = np.empty(len(lengths), dtype=np.int32)  # items per pack (at most one pack per item)
    at = packs = 0
    # One iteration per pack, each a subset sum over at most pack_len sums: about 1e5 packs in seconds.
    while h.left and not budget.spent():
        anchor = h.avail[-1]
        h.take(anchor)
        room = pack_len - anchor
        cand = h.avail[: bisect.bisect_right(h.avail, room)][::-1]
        fill = _subset_sum(room, cand, [h.counts[v] for v in cand], budget) if room and cand else []
        if len(fill) + 1 > cap:  # over the segment cap: best fit, largest first, up to the cap
            fill = []
            left = room
            for v in cand:
                k = min(h.counts[v], left // v, cap - 1 - len(fill))
                fill.extend([v] * k)
                left -= v * k
        for v in fill:
            h.take(v)
        slots[at] = anchor
        slots[at + 1:at + 1 + len(fill)] = fill
        sizes[packs] = 1 + len(fill)
        at += 1 + len(fill)
        packs += 1
    if h.left:  # the budget ran out: BFD packs what is left
        rest = np.repeat(np.arange(pack_len + 1, dtype=np.int64), h.counts)
        order, offsets = binpack.bfd(rest, pack_len, None if cap > len(lengths) else cap)
        slots[at:] = rest[order]
        sizes[packs:packs + len(offsets) - 1] = np.diff(offsets)
        packs += len(offsets) - 1
    return slots, np.concatenate([[0], np.cumsum(sizes[:packs], dtype=np.int64)])


def _cpsat_merge(groups: list[list[int]], pack_len: int, cap: int, budget: _Budget,
                 seed: int) -> list[list[int]] | None:
    """Fit the items of `groups` (lists of lengths) into one pack fewer with CP-SAT, or None.

    The model: x[i][b] = item i in bin b; each item in exactly one bin; each bin's lengths within
    pack_len and its items within cap; item i only in bins 0..i (symmetry)."""
    items = [v for g in groups for v in g]
    bins = len(groups) - 1
    if bins < 1 or sum(items) > bins * pack_len:
        return None
    # One worker and a deterministic time limit: the same model and seed give the same answer on any
    # machine (several workers race, and a wall-clock limit cuts the search at a load-dependent point).
    solution, seconds = _solve(items, bins, pack_len, cap, min(CPSAT_CALL_SECONDS, budget.left), seed)
    budget.charge(max(seconds, MIN_CHARGE))
    if solution is None:
        return None
    out: list[list[int]] = [[] for _ in range(bins)]
    for i, v in enumerate(items):
        out[next(b for b in range(bins) if solution[i * bins + b])].append(v)
    return [g for g in out if g]


def _merge_model(items: list[int], bins: int, pack_len: int, cap: int):
    """_cpsat_merge's model as a CpModelProto (ortools >= 9.15, whose protos are native), built field by field:
    the proto cp_model.CpModel gives for it (a test holds them equal), and the solve is the one CpSolver.solve
    makes (SolveWrapper, these parameters), without importing cp_model, which imports pandas (~45 MB of
    memory kept for the rest of a `packer pack`)."""
    from ortools.sat.python import cp_model_helper as cmh

    proto = cmh.CpModelProto()
    n = len(items)
    for i in range(n):
        for b in range(bins):
            v = proto.variables.add()
            v.name = f"x{i}_{b}"
            v.domain.extend([0, 1])
    for i in range(n):
        proto.constraints.add().exactly_one.literals.extend(range(i * bins, (i + 1) * bins))
    column = [[i * bins + b for i in range(n)] for b in range(bins)]
    rows = [(items, pack_len)] + ([([1] * n, cap)] if cap < n else [])  # per bin: its lengths, its count
    for b in range(bins):
        for coeffs, most in rows:
            linear = proto.constraints.add().linear
            linear.vars.extend(column[b])
            linear.coeffs.extend(coeffs)
            linear.domain.extend([-(1 << 63), most])
    for i in range(min(n, bins)):
        for b in range(i + 1, bins):
            linear = proto.constraints.add().linear
            linear.vars.append(i * bins + b)
            linear.coeffs.append(1)
            linear.domain.extend([0, 0])
    return proto


def _solve(items: list[int], bins: int, pack_len: int, cap: int, seconds: float, seed: int
           ) -> tuple[list[int] | None, float]:
    """(the solution's values, x[i][b] at i * bins + b, or None; deterministic seconds used) of the merge
    model, with one worker, `seconds` of deterministic time and `seed`."""
    from ortools.sat.python import cp_model_helper as cmh

    proto = _merge_model(items, bins, pack_len, cap)
    params = cmh.SatParameters()
    params.max_deterministic_time = seconds
    params.num_workers = 1
    params.random_seed = seed
    solver = cmh.SolveWrapper()
    solver.set_parameters(params)
    response = solver.solve(proto)
    if response.status not in (cmh.CpSolverStatus.OPTIMAL, cmh.CpSolverStatus.FEASIBLE):
        return None, response.deterministic_time
    return list(response.solution), response.deterministic_time


def _assign(packs: Packs, lengths: np.ndarray, pack_len: int) -> binpack.Packing:
    """Turn packs of lengths into item indices: equal lengths are handed out in input order."""
    slots, offsets = packs
    order_sorted, _, _ = binpack._classes(lengths, pack_len)
    slot_order = np.argsort((pack_len - slots.astype(np.int64)).astype(np.uint32), kind="stable")
    order = np.empty(len(lengths), dtype=np.int64)
    order[slot_order] = order_sorted
    return order, np.asarray(offsets, dtype=np.int64)


def _ranges(order: np.ndarray, offsets: np.ndarray, packs: np.ndarray) -> np.ndarray:
    """The items of the given packs, pack by pack (one whole-array gather)."""
    return order[concat_ranges(offsets[packs], offsets[packs + 1] - offsets[packs])]


def _num(packs: Packs) -> int:
    return len(packs[1]) - 1


def _improve(pack_len: int, cap: int, lb: int, budget: _Budget, seed: int, packs: Packs, fallback: Packs) -> Packs:
    """The better of `packs` and `fallback`, then CP-SAT merges among its POOL emptiest packs.

    Only the pool is held as Python lists (the merges only ever take the emptiest few packs), so the
    memory stays that of the arrays however many packs there are."""
    best = packs if _num(packs) < _num(fallback) else fallback
    if _num(best) <= lb or budget.spent():
        return best
    slots, offsets = best
    fill = np.add.reduceat(slots.astype(np.int64), offsets[:-1]) if len(slots) else np.zeros(0, np.int64)
    by_fill = np.argsort(-fill, kind="stable")  # fullest first; ties keep pack order
    keep, pool_ids = np.sort(by_fill[:-POOL]) if len(by_fill) > POOL else by_fill[:0], by_fill[-POOL:]
    pool = [slots[offsets[i]:offsets[i + 1]].tolist() for i in pool_ids]
    group, merged_any = GROUP_MIN, False
    while len(keep) + len(pool) > lb and not budget.spent() and group <= GROUP_MAX:
        pool.sort(key=sum, reverse=True)
        tail = pool[-group:]
        if sum(len(p) for p in tail) > MAX_MODEL_ITEMS:
            break
        merged = _cpsat_merge(tail, pack_len, cap, budget, seed)
        if merged is None:
            group += 1
            continue
        pool = pool[:-group] + merged
        merged_any = True
    if not merged_any:
        return best
    kept = _ranges(slots, offsets, keep)
    sizes = np.concatenate([offsets[keep + 1] - offsets[keep], [len(p) for p in pool]]).astype(np.int64)
    flat = np.concatenate([kept, np.fromiter((v for p in pool for v in p), dtype=np.int32)]).astype(np.int32)
    return flat, np.concatenate([[0], np.cumsum(sizes)])


def ortools_plan(lengths: np.ndarray, pack_len: int, *, seed: int = 0, max_segments: int | None = None,
                 time_limit: float | None = None) -> tuple[np.ndarray, np.ndarray, bool | None]:
    """BFD, then exact refill, then CP-SAT merges of the emptiest packs, within `time_limit` deterministic
    seconds (None: default_budget(len(lengths))).

    The refill first works on the items of BFD's packs that are not exactly full (BFD fills most
    packs to the token on real data, so this is a small residual even for millions of items); when
    that does not reach the bound and time remains, it refills everything.
    """
    budget = _Budget(default_budget(len(lengths)) if time_limit is None else time_limit)
    cap = max_segments or len(lengths) + 1
    order, offsets = binpack.bfd(lengths, pack_len, max_segments)
    lb = lower_bound(lengths, pack_len)
    if max_segments and len(lengths):
        lb = max(lb, -(-len(lengths) // max_segments))
    num_packs = len(offsets) - 1
    if num_packs <= lb:
        return order, offsets, True
    fill = np.add.reduceat(lengths[order], offsets[:-1])
    open_packs = np.flatnonzero(fill < pack_len)
    full_packs = np.flatnonzero(fill >= pack_len)
    need = lb - len(full_packs)  # packs the residual would need to reach the bound
    res_items = _ranges(order, offsets, open_packs)
    res_len = lengths[res_items]
    bfd_res = (res_len.astype(np.int32), np.concatenate([[0], np.cumsum(offsets[open_packs + 1] - offsets[open_packs])]))
    packs = _refill(res_len, pack_len, cap, budget)
    best = _improve(pack_len, cap, need, budget, seed, packs, bfd_res)
    if _num(best) > need and len(full_packs) and not budget.spent():
        everything = _refill(lengths, pack_len, cap, budget)
        if _num(everything) < _num(best) + len(full_packs):
            o, off = _assign(everything, lengths, pack_len)
            return o, off, (_num(everything) <= lb) or None
    if best is bfd_res:
        return order, offsets, None
    res_order, res_offsets = _assign(best, res_len, pack_len)
    kept = _ranges(order, offsets, full_packs)
    kept_off = offsets[full_packs + 1] - offsets[full_packs]
    new_order = np.concatenate([kept, res_items[res_order]])
    new_offsets = np.concatenate([[0], np.cumsum(np.concatenate([kept_off, np.diff(res_offsets)]))]).astype(np.int64)
    return new_order, new_offsets, (len(full_packs) + _num(best) <= lb) or None


def default_budget(items: int) -> float:
    """The default work budget, in deterministic seconds, for planning `items` lengths: one second plus
    BUDGET_PER_ITEM a length, at most BUDGET_MAX. Scaled with the data so the search keeps pace with it
    (the refill needs about one subset sum per pack); capped because the planner runs on the driver
    alone while the map stages scale out."""
    return min(BUDGET_MAX, 1.0 + items * BUDGET_PER_ITEM)
