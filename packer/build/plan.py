"""Stage 2, plan: example lengths -> which examples share each pack.

`plan()` is the pure planner over an int array. `plan_stage()` applies the over-long policy to
the tokenized examples (pieces), plans the pieces and writes the plan folder:

    pieces.npy   int64 [n, 3]   (row, start, length): tokens [start, start+length) of tokenized row
    order.npy    int64 [n]      piece indices, pack by pack
    offsets.npy  int64 [P + 1]  pack p holds order[offsets[p]:offsets[p+1]]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from packer.build.planners import fit_decreasing as binpack
from packer.core import config as C
from packer.build.planners.bounds import lower_bound
from packer.core.context_parallel import check_cp_size, padded_lengths
from packer.core.errors import ConfigError, FormatError, InputError
from packer.core.manifest import Manifest, commit_stage, current, read_manifest
from packer.core.ranges import within

FORMAT = "packer-plan"
VERSION = 3  # 2: manifests carry manifest_sha256; 3: mixture weights (a row may repeat), deterministic solver

Algorithm = Callable[..., "tuple[np.ndarray, np.ndarray, bool | None]"]


def _heuristic(fn: Callable[..., binpack.Packing]) -> Algorithm:
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
    "nextfit": _heuristic(binpack.nextfit),
    # ffd: sorted, oldest pack that fits; within a fraction of a percent of bfd, slightly faster.
    "ffd": _heuristic(binpack.ffd),
    # bfd: sorted, tightest pack that fits; the usual choice, 10M items in under a second.
    "bfd": _heuristic(binpack.bfd),
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


def cut_overlong(lengths: np.ndarray, prompt_len: np.ndarray, pack_len: int, policy: str
                 ) -> tuple[np.ndarray, dict[str, int]]:
    """Apply the over-long policy; returns pieces int64 [n, 3] (row, start, length) and counts.

    truncate keeps the first pack_len tokens (the prompt, then as much of the answer as fits); an
    example whose prompt alone fills the pack has nothing left to learn and is dropped. split cuts
    pack_len pieces, each its own segment; pieces that lie wholly inside the prompt are dropped.
    """
    lengths = np.asarray(lengths, np.int64)
    prompt_len = np.asarray(prompt_len, np.int64)
    rows = np.arange(len(lengths), dtype=np.int64)
    over = lengths > pack_len
    counts = {"overlong_examples": int(over.sum()), "truncated_examples": 0, "truncated_tokens": 0,
              "dropped_examples": 0, "dropped_tokens": 0, "split_examples": 0, "split_dropped_pieces": 0}
    if policy == "truncate":
        hopeless = over & (prompt_len >= pack_len)
        cut = over & ~hopeless
        keep = ~hopeless
        counts.update(truncated_examples=int(cut.sum()),
                      truncated_tokens=int((lengths[cut] - pack_len).sum()),
                      dropped_examples=int(hopeless.sum()), dropped_tokens=int(lengths[hopeless].sum()))
        pieces = np.stack([rows[keep], np.zeros(keep.sum(), np.int64),
                           np.minimum(lengths[keep], pack_len)], axis=1)
    elif policy == "drop":
        counts.update(dropped_examples=int(over.sum()), dropped_tokens=int(lengths[over].sum()))
        pieces = np.stack([rows[~over], np.zeros((~over).sum(), np.int64), lengths[~over]], axis=1)
    elif policy == "split":
        n_pieces = -(-lengths // pack_len)
        prow = np.repeat(rows, n_pieces)
        k = within(n_pieces)
        start = k * pack_len
        plen = np.minimum(lengths[prow] - start, pack_len)
        useful = start + plen > prompt_len[prow]  # some trained-on token inside the piece
        counts.update(split_examples=int(over.sum()), split_dropped_pieces=int((~useful).sum()),
                      dropped_tokens=int(plen[~useful].sum()))
        pieces = np.stack([prow[useful], start[useful], plen[useful]], axis=1)
    elif policy == "error":
        pieces = np.stack([rows, np.zeros(len(rows), np.int64), lengths], axis=1)
    else:
        raise ConfigError(f"overlong policy '{policy}' is not one of {', '.join(C.OVERLONG)}")
    return pieces.reshape(-1, 3).astype(np.int64), counts


def plan_stage(tokenized: str | Path, out: str | Path, config: C.PlanConfig, *, rehash: bool = False) -> Manifest:
    """Stage 2: plan the tokenized folder `tokenized` into the folder `out`; returns its manifest."""
    from packer.build.tokenize import FORMAT as TOK_FORMAT, VERSION as TOK_VERSION, read_columns

    tok_manifest = read_manifest(Path(tokenized), TOK_FORMAT, TOK_VERSION,
                                 "run `packer tokenize` (or `packer pack`) again")
    digest = C.digest({"stage": "plan", "version": VERSION, "config": C.to_dict(config),
                       "input": tok_manifest["digest"]})
    existing = current(Path(out), FORMAT, VERSION, digest, rehash=rehash)
    if existing is not None:
        return existing
    cols = read_columns(tokenized, ("length", "prompt_len", "file_index", "line"))
    lengths, prompt_len = cols["length"], cols["prompt_len"]
    if config.overlong == "error" and len(lengths) and lengths.max() > config.pack_len:
        _raise_overlong(tok_manifest, cols, lengths, config.pack_len)
    rows = mixture_rows(_sources_of(tok_manifest, cols["file_index"]), config.weights, config.seed,
                        len(tok_manifest.get("sources", [None])))
    if config.layout == "wrapped":
        kind = tok_manifest["config"].get("kind")
        if kind != "text":
            raise ConfigError(f"layout wrapped is for --kind text (pretraining documents); this run is {kind}, whose "
                              "examples would lose their prompt where a pack boundary cuts them: use best-fit")
        pieces, counts = wrap(lengths[rows], config.pack_len)
        pieces[:, 0] = rows[pieces[:, 0]]
        p = wrapped_plan(pieces[:, 2], config.pack_len)
    else:
        pieces, counts = cut_overlong(lengths[rows], prompt_len[rows], config.pack_len, config.overlong)
        pieces[:, 0] = rows[pieces[:, 0]]  # back to tokenized rows (a repeated example names its row again)
        p = plan(pieces[:, 2], config.pack_len, config.algorithm, seed=config.seed,
                 max_segments=config.max_segments, time_limit=config.time_limit, cp_size=config.cp_size)
        counts["cp_padding_tokens"] = int((padded_lengths(pieces[:, 2], config.cp_size) - pieces[:, 2]).sum())
    if len(pieces) == 0:  # before anything is committed: a run of no packs is an error, not a result
        names = ", ".join(i["path"] for i in tok_manifest["inputs"])
        raise InputError(names, None, None, f"none of its {len(lengths):,} examples is left to pack "
                         f"(--overlong {config.overlong} at --pack-len {config.pack_len})",
                         "raise --pack-len" + ("" if config.overlong == "split" else " or pass --overlong split"))

    def build(tmp: Path) -> dict:
        np.save(tmp / "pieces.npy", pieces)
        np.save(tmp / "order.npy", p.order)
        np.save(tmp / "offsets.npy", p.offsets)
        tokens = int(pieces[:, 2].sum())
        return {
            "format": FORMAT, "version": VERSION, "digest": digest, "config": C.to_dict(config),
            "input_digest": tok_manifest["digest"],
            "counts": dict(counts, examples_in=len(lengths), examples_mixed=len(rows), pieces=len(pieces),
                           tokens=tokens, packs=p.num_packs),
            "plan": {"algorithm": p.algorithm, "num_packs": p.num_packs, "lower_bound": p.lower_bound,
                     "optimal": p.optimal, "gap": p.gap, "time_limit": p.time_limit,
                     "efficiency": tokens / max(1, p.num_packs * config.pack_len)},
        }  # no wall time: manifests are byte-identical on rerun; callers time the stage themselves

    return commit_stage(Path(out), build)


def wrap(lengths: np.ndarray, pack_len: int) -> tuple[np.ndarray, dict[str, int]]:
    """The wrapped layout's pieces: documents end to end in order, cut at every multiple of pack_len.
    Returns pieces int64 [n, 3] (row, start, length), in stream order, and counts."""
    lengths = np.asarray(lengths, np.int64)
    begin = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    first = begin // pack_len
    last = (begin + lengths - 1) // pack_len
    n_pieces = np.where(lengths > 0, last - first + 1, 0)
    row = np.repeat(np.arange(len(lengths), dtype=np.int64), n_pieces)
    k = within(n_pieces)
    pack = first[row] + k
    lo = np.maximum(begin[row], pack * pack_len)
    hi = np.minimum(begin[row] + lengths[row], (pack + 1) * pack_len)
    pieces = np.stack([row, lo - begin[row], hi - lo], axis=1)
    cont = pieces[:, 1] > 0
    counts = {"overlong_examples": int((lengths > pack_len).sum()), "truncated_examples": 0, "truncated_tokens": 0,
              "dropped_examples": 0, "dropped_tokens": 0, "split_examples": int((n_pieces > 1).sum()),
              "split_dropped_pieces": 0, "wrapped_cut_documents": int((n_pieces > 1).sum()),
              "wrapped_tokens_without_left_context": int(pieces[cont, 2].sum())}
    return pieces, counts


def wrapped_plan(piece_len: np.ndarray, pack_len: int) -> Plan:
    """The packs of the wrapped layout: pieces in stream order, a new pack at every pack_len tokens."""
    t0 = time.perf_counter()
    ends = np.cumsum(piece_len)
    starts = ends - piece_len
    pack_of = starts // pack_len
    num = int(pack_of[-1]) + 1 if len(pack_of) else 0
    offsets = np.searchsorted(pack_of, np.arange(num + 1), side="left").astype(np.int64)
    lb = lower_bound(piece_len, pack_len)
    return Plan(np.arange(len(piece_len), dtype=np.int64), offsets, int(pack_len), lb, (num <= lb) or None,
                "wrapped", time.perf_counter() - t0)


def _sources_of(manifest: dict, file_index: np.ndarray) -> np.ndarray:
    """Per tokenized example, the index of the input source (InputSpec) its file came from."""
    inputs = manifest.get("inputs", [])
    source = np.asarray([int(i.get("source", 0)) if isinstance(i, dict) else 0 for i in inputs] or [0], np.int64)
    if len(file_index) and (file_index.min() < 0 or file_index.max() >= len(source)):
        raise FormatError(str(manifest.get("digest", "tokenized")), "file_index outside the manifest's inputs",
                          "run `packer tokenize` (or `packer pack`) again")
    return source[file_index] if len(file_index) else np.zeros(0, np.int64)


def mixture_rows(source: np.ndarray, weights: tuple[float, ...], seed: int, sources: int | None = None) -> np.ndarray:
    """The examples a weighted mixture trains on, as tokenized rows in data order (repeats adjacent).

    A weight multiplies its source's examples: 2 keeps each twice, 0.5 keeps a seeded half, 2.5 twice
    plus a seeded half (round(0.5 * n) examples chosen without replacement). The sample depends only
    on the seed and the source's position, never on the clock or the executor. weights=() keeps all.

    Example, source = [0, 0, 1, 1], weights = (1, 1.5), a seed choosing row 3 for the half::

        rows = [0, 1, 2, 3, 3]
    """
    n = len(source)
    if not weights:
        return np.arange(n, dtype=np.int64)
    count = np.zeros(n, dtype=np.int64)
    top = sources if sources is not None else (int(source.max()) + 1 if n else 0)
    if top != len(weights) or (n and int(source.max()) >= len(weights)):
        raise ConfigError(f"{len(weights)} weights for {top} input sources: give one weight per input")
    for s, w in enumerate(weights):
        idx = np.flatnonzero(source == s)
        whole, frac = int(w), w - int(w)
        count[idx] = whole
        k = int(round(frac * len(idx)))
        if k:
            rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, s, 0x6D6978]))
            count[idx[rng.choice(len(idx), k, replace=False)]] += 1
    return np.repeat(np.arange(n, dtype=np.int64), count)


def read_plan(folder: str | Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(manifest, pieces, order, offsets) of a plan folder."""
    folder = Path(folder)
    hint = "run `packer plan` (or `packer pack`) again"
    manifest = read_manifest(folder, FORMAT, VERSION, hint)
    arrays = []
    for name in ("pieces.npy", "order.npy", "offsets.npy"):
        try:
            arrays.append(np.load(folder / name, allow_pickle=False))
        except (OSError, ValueError, EOFError) as e:
            raise FormatError(str(folder / name), f"unreadable ({str(e).splitlines()[0][:100]})", hint) from None
    pieces, order, offsets = arrays
    n = len(pieces)
    ok = (pieces.dtype == np.int64 and pieces.ndim == 2 and pieces.shape[1] == 3 and order.dtype == np.int64
          and order.ndim == 1 and offsets.dtype == np.int64 and offsets.ndim == 1 and len(offsets) >= 1
          and offsets[0] == 0 and offsets[-1] == len(order) and bool(np.all(np.diff(offsets) >= 0))
          and (len(order) == 0 or (int(order.min()) >= 0 and int(order.max()) < n))
          and (n == 0 or (int(pieces.min()) >= 0 and int(pieces[:, 2].min()) > 0)))
    if not ok:
        raise FormatError(str(folder), "pieces.npy, order.npy and offsets.npy do not form a plan "
                          "(shapes, dtypes or ranges)", hint)
    return manifest, pieces, order, offsets


def _column(tables: list, name: str) -> np.ndarray:
    parts = [t.column(name).to_numpy() for t in tables]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def _raise_overlong(manifest: dict, cols: dict, lengths: np.ndarray, pack_len: int) -> None:
    row = int(np.flatnonzero(lengths > pack_len)[0])
    files, lines = cols["file_index"], cols["line"]
    from packer.build.sources import kind_of

    path = manifest["inputs"][int(files[row])]["path"]
    where, line = (path, int(lines[row])) if kind_of(path) == "jsonl" else (f"{path}: row {int(lines[row])}", None)
    raise InputError(where, line, None,
                     f"example has {int(lengths[row])} tokens, more than --pack-len {pack_len}",
                     "raise --pack-len or pass --overlong truncate, drop or split")
