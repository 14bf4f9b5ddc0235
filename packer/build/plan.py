"""Stage 2, plan: the tokenized examples' lengths -> which tokens of which examples share each pack.

`plan_stage()` applies the mixture weights and the over-long policy to the tokenized examples (giving
pieces), plans the pieces with an algorithm of packer.build.planners (or the wrapped layout) and
writes the plan folder (packer.core.formats.plan).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from packer.build.planners import Plan, plan
from packer.core.roles import CHOSEN, KL, REJECTED, UNPAIRED
from packer.build.planners.bounds import lower_bound
from packer.core import config as C
from packer.core.context_parallel import padded_lengths
from packer.core.formats.plan import FORMAT, VERSION, write_plan
from packer.core.formats.tokenized import FORMAT as TOK_FORMAT, VERSION as TOK_VERSION, read_columns
from packer.core.errors import ConfigError, FormatError, InputError
from packer.core.manifest import Manifest, commit_stage, current, read_manifest
from packer.core.ranges import within


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


def plan_stage(tokenized: str | Path, out: str | Path, config: C.PlanConfig, *, rehash: bool = False,
               rebuild: bool = False) -> Manifest:
    """Stage 2: plan the tokenized folder `tokenized` into the folder `out`; returns its manifest.

    The tokenized folder is checked before use (its seal, every file's sha256 once per run, each chunk's
    structure). rebuild: plan even when the existing plan is up to date (an upstream stage was repaired)."""
    tok_manifest = read_manifest(Path(tokenized), TOK_FORMAT, TOK_VERSION,
                                 "run `packer tokenize` (or `packer pack`) again")
    digest = C.digest({"stage": "plan", "version": VERSION, "config": C.to_dict(config),
                       "input": tok_manifest["digest"]})
    existing = None if rebuild else current(Path(out), FORMAT, VERSION, digest, rehash=rehash)
    if existing is not None:
        return existing
    cols = read_columns(tokenized, ("length", "prompt_len", "file_index", "line", "example_index", "role"))
    lengths, prompt_len = cols["length"], cols["prompt_len"]
    kind = tok_manifest["config"].get("kind")
    if (kind == "preference") != (config.layout in PREFERENCE_LAYOUTS) and config.layout != "best-fit":
        raise ConfigError(f"layout {config.layout} is for " + ("--kind preference" if config.layout in
                          PREFERENCE_LAYOUTS else "--kind text") + f"; this run is {kind}")
    if config.overlong == "error" and kind != "preference" and len(lengths) and lengths.max() > config.pack_len:
        _raise_overlong(tok_manifest, cols, lengths, config.pack_len)
    if kind == "preference":
        p, pieces, counts = preference_plan(tok_manifest, cols, config)
        rows = np.unique(pieces[:, 0])
    elif config.layout == "wrapped":
        rows = mixture_rows(_sources_of(tok_manifest, cols["file_index"]), config.weights, config.seed,
                            len(tok_manifest.get("sources", [None])))
        if kind != "text":
            raise ConfigError(f"layout wrapped is for --kind text (pretraining documents); this run is {kind}, whose "
                              "examples would lose their prompt where a pack boundary cuts them: use best-fit")
        pieces, counts = wrap(lengths[rows], config.pack_len)
        counts["per_file"] = per_file_counts(lengths, cols["file_index"], rows, pieces, len(tok_manifest["inputs"]))
        pieces[:, 0] = rows[pieces[:, 0]]
        p = wrapped_plan(pieces[:, 2], config.pack_len)
    elif "images" in tok_manifest:
        p, pieces, counts, rows = vision_plan(tokenized, tok_manifest, cols, config)
    else:
        if config.max_patches is not None:
            raise ConfigError("--max-patches bounds the vision patches of runs with images; this run has none "
                              "(tokenize with --processor)")
        rows = mixture_rows(_sources_of(tok_manifest, cols["file_index"]), config.weights, config.seed,
                            len(tok_manifest.get("sources", [None])))
        pieces, counts = cut_overlong(lengths[rows], prompt_len[rows], config.pack_len, config.overlong)
        counts["per_file"] = per_file_counts(lengths, cols["file_index"], rows, pieces, len(tok_manifest["inputs"]))
        pieces[:, 0] = rows[pieces[:, 0]]  # back to tokenized rows (a repeated example names its row again)
        p = plan(pieces[:, 2], config.pack_len, config.algorithm, seed=config.seed,
                 max_segments=config.max_segments, time_limit=config.time_limit, cp_size=config.cp_size)
        p, counts["even"] = evened(p, padded_lengths(pieces[:, 2], config.cp_size), config)
        counts["cp_padding_tokens"] = int((padded_lengths(pieces[:, 2], config.cp_size) - pieces[:, 2]).sum())
    if len(pieces) == 0:  # before anything is committed: a run of no packs is an error, not a result
        names = ", ".join(i["path"] for i in tok_manifest["inputs"])
        raise InputError(names, None, None, f"none of its {len(lengths):,} examples is left to pack "
                         f"(--overlong {config.overlong} at --pack-len {config.pack_len})",
                         "raise --pack-len" + ("" if config.overlong == "split" else " or pass --overlong split"))

    def build(tmp: Path) -> dict:
        write_plan(tmp, pieces, p.order, p.offsets)
        tokens = int(pieces[:, 2].sum())
        even_counts = counts.get("even", {"by": "none"})
        return {
            "format": FORMAT, "version": VERSION, "digest": digest, "config": C.to_dict(config),
            "input_digest": tok_manifest["digest"],
            "counts": dict({k: v for k, v in counts.items() if k != "even"}, examples_in=len(lengths),
                           examples_mixed=len(rows), pieces=len(pieces),
                           tokens=tokens, packs=p.num_packs),
            "plan": {"algorithm": p.algorithm, "num_packs": p.num_packs, "lower_bound": p.lower_bound,
                     "optimal": p.optimal, "gap": p.gap, "time_limit": p.time_limit,
                     "efficiency": tokens / max(1, p.num_packs * config.pack_len), "even": even_counts},
        }  # no wall time: manifests are byte-identical on rerun; callers time the stage themselves

    return commit_stage(Path(out), build)


PREFERENCE_LAYOUTS = ("pairs", "shared-prompt")


def vision_plan(tokenized, manifest: dict, cols: dict, config: C.PlanConfig) -> tuple[Plan, np.ndarray, dict, np.ndarray]:
    """Plan a run with images: examples are never cut (an image's placeholders stay with it), an over-long
    example is dropped (--overlong drop) or refused, and with --max-patches every pack also holds at most that
    many vision patches (first-fit decreasing over both capacities)."""
    from packer.build.planners import lower_bound
    from packer.build.planners.two_capacities import even_patches, first_fit_two

    if config.layout != "best-fit" or config.cp_size != 1:
        raise ConfigError("runs with images are planned best-fit without context parallelism for now; drop --layout "
                          "and --cp-size")
    lengths = cols["length"]
    try:
        patches = read_columns(tokenized, ["patches"])["patches"]
    except KeyError:
        raise FormatError(str(tokenized), "its manifest names images but its chunks have no image columns",
                          "the tokenized stage is damaged; delete it and re-run `packer pack`") from None
    rows = mixture_rows(_sources_of(manifest, cols["file_index"]), config.weights, config.seed,
                        len(manifest.get("sources", [None])))
    over = lengths[rows] > config.pack_len
    if over.any() and config.overlong != "drop":
        row = int(rows[np.flatnonzero(over)[0]])
        path, line = _located(manifest, cols, row)
        raise InputError(path, line, None, f"an example of {int(lengths[row]):,} tokens (with its images' placeholders) "
                         f"is longer than --pack-len {config.pack_len}; an example with images is never cut "
                         f"(--overlong {config.overlong})", "raise --pack-len, or pass --overlong drop")
    if config.max_patches is not None:
        big = patches[rows] > config.max_patches
        if big.any():
            row = int(rows[np.flatnonzero(big)[0]])
            path, line = _located(manifest, cols, row)
            raise InputError(path, line, None, f"its images have {int(patches[row]):,} vision patches, more than "
                             f"--max-patches {config.max_patches:,}; an image is never split", "raise --max-patches, or "
                             "lower max_pixels in the processor's preprocessor_config.json so the processor sizes it down")
    dropped = over
    keep = rows[~dropped]
    counts = {"overlong_examples": int(over.sum()), "truncated_examples": 0, "truncated_tokens": 0,
              "dropped_examples": int(dropped.sum()), "dropped_tokens": int(lengths[rows][dropped].sum()),
              "split_examples": 0, "split_pieces": 0, "images_patches": int(patches[keep].sum())}
    pieces = np.stack([keep, np.zeros(len(keep), np.int64), lengths[keep]], axis=1).astype(np.int64)
    counts["per_file"] = per_file_counts(lengths, cols["file_index"], rows, np.stack(
        [np.flatnonzero(~dropped), np.zeros(len(keep), np.int64), lengths[keep]], axis=1).astype(np.int64),
        len(manifest["inputs"]))
    if config.max_patches is None:
        p = plan(pieces[:, 2], config.pack_len, config.algorithm, seed=config.seed, max_segments=config.max_segments,
                 time_limit=config.time_limit)
        p, counts["even"] = evened(p, pieces[:, 2], config)
        return p, pieces, counts, rows
    if config.even != "none":
        raise ConfigError(f"--max-patches evens the packs' vision patches; --even {config.even} would even something "
                          "else: drop one of them")
    if config.algorithm != "ffd":
        raise ConfigError(f"--max-patches is planned by first-fit decreasing over tokens and patches; --algorithm "
                          f"{config.algorithm} does not take a second capacity: pass --algorithm ffd")
    order, offsets = first_fit_two(pieces[:, 2], patches[keep], config.pack_len, config.max_patches,
                                   config.max_segments)
    order, offsets = even_patches(order, offsets, pieces[:, 2], patches[keep], config.pack_len, config.max_patches,
                                  config.max_segments)
    lb = max(lower_bound(pieces[:, 2], config.pack_len), -(-int(patches[keep].sum()) // config.max_patches))
    return Plan(order, offsets, config.pack_len, lb, True if len(offsets) - 1 == lb else None, "ffd-2d", 0.0,
                None), pieces, counts, rows


def units_of(example_index: np.ndarray, roles: np.ndarray, where: str) -> np.ndarray:
    """Start row of every preference record's rows (consecutive rows of one example_index): each record has
    exactly two (chosen then rejected, or a KTO completion then its KL row), else the stage is damaged."""
    n = len(example_index)
    starts = np.flatnonzero(np.concatenate([[True], example_index[1:] != example_index[:-1]])) if n else \
        np.zeros(0, np.int64)
    sizes = np.diff(np.concatenate([starts, [n]]))
    first, second = roles[starts], roles[np.minimum(starts + 1, max(n - 1, 0))]
    ok = (sizes == 2) & (((first == CHOSEN) & (second == REJECTED)) | (np.isin(first, UNPAIRED) & (second == KL)))
    if not ok.all():
        bad = int(starts[np.flatnonzero(~ok)[0]])
        raise FormatError(where, f"preference record {int(example_index[bad])} does not have its two rows "
                          "(chosen then rejected, or a completion then its KL row)",
                          "run `packer tokenize` (or `packer pack`) again")
    return starts.astype(np.int64)


def fit_replies(prompt: np.ndarray, replies: np.ndarray, copies: int, pack_len: int) -> np.ndarray:
    """Per unit, the reply lengths kept so copies * prompt + both replies fit pack_len: the longer reply is cut
    first, down to an even share (water-filling); -1 where even one token each does not fit (dropped).
    prompt [U], replies [U, 2] -> kept [U, 2]."""
    budget = pack_len - copies * prompt
    a, b = replies.min(1), replies.max(1)
    keep_b = np.where(a + b <= budget, b, np.where(2 * a <= budget, budget - a, budget // 2))
    keep_a = np.minimum(a, budget - keep_b)
    small = replies[:, 0] <= replies[:, 1]
    kept = np.stack([np.where(small, keep_a, keep_b), np.where(small, keep_b, keep_a)], axis=1)
    kept[(budget < 2) | (kept.min(1) < 1)] = -1
    return kept


def preference_plan(manifest: dict, cols: dict, config: C.PlanConfig) -> tuple[Plan, np.ndarray, dict]:
    """A preference run's plan: each record's rows form one unit, planned as one item, so a pair (or a KTO
    completion and its KL row) is always in one pack, adjacent, in its order. Layout pairs: each row a segment;
    shared-prompt: the prompt once (a piece of the first row) then each reply (a piece of each row). The
    over-long policy applies to the unit: truncate cuts the replies and keeps the prompt, drop, or error.
    Returns (plan over pieces, pieces [n, 3] as tokenized rows, counts)."""
    if config.overlong == "split":
        raise ConfigError("--overlong split would cut a preference pair apart; use truncate, drop or error")
    if config.cp_size != 1 or config.max_segments is not None:
        raise ConfigError("--kind preference does not take " + ("--cp-size" if config.cp_size != 1 else
                          "--max-segments") + " yet: Packer plans a pair as one unit; drop the option")
    shared = config.layout == "shared-prompt"
    lengths, prompt_len = cols["length"], cols["prompt_len"]
    roles = cols["role"]
    starts = units_of(cols["example_index"], roles, str(manifest.get("digest", "tokenized")))
    a, b = starts, starts + 1
    prompt = prompt_len[a]
    if shared and (prompt_len[b] != prompt).any():
        u = int(np.flatnonzero(prompt_len[b] != prompt)[0])
        raise InputError(*_located(manifest, cols, int(a[u])), None,
                         f"its two replies follow prompts of {int(prompt[u])} and {int(prompt_len[b[u]])} tokens "
                         "(the chat template renders the prompt differently before each)",
                         "use --layout pairs for this data")
    units = mixture_rows(_sources_of(manifest, cols["file_index"][a]), config.weights, config.seed,
                         len(manifest.get("sources", [None])))
    ua, ub, up = a[units], b[units], prompt[units]
    replies = np.stack([lengths[ua] - up, lengths[ub] - up], axis=1)
    copies = 1 if shared else 2
    total = copies * up + replies.sum(1)
    over = total > config.pack_len
    counts = {"overlong_examples": int(over.sum()), "truncated_examples": 0, "truncated_tokens": 0,
              "dropped_examples": 0, "dropped_tokens": 0, "split_examples": 0, "split_dropped_pieces": 0}
    if over.any() and config.overlong == "error":
        u = int(units[np.flatnonzero(over)[0]])
        raise InputError(*_located(manifest, cols, int(a[u])), None,
                         f"pair has {int(total[np.flatnonzero(over)[0]])} tokens in the "
                         f"{'shared-prompt' if shared else 'pairs'} layout, more "
                         f"than --pack-len {config.pack_len}", "raise --pack-len or pass --overlong truncate or drop")
    kept = replies.copy()
    if config.overlong == "truncate":
        kept[over] = fit_replies(up[over], replies[over], copies, config.pack_len)
    else:
        kept[over] = -1
    live = kept[:, 0] >= 0
    cut = over & live
    counts.update(truncated_examples=int(cut.sum()), truncated_tokens=int((replies[cut] - kept[cut]).sum()),
                  dropped_examples=int((~live).sum()), dropped_tokens=int(total[~live].sum()))
    ua, ub, up, kept = ua[live], ub[live], up[live], kept[live]
    zero = np.zeros(len(ua), np.int64)
    if shared:
        pieces = np.stack([np.stack([ua, zero, up], 1), np.stack([ua, up, kept[:, 0]], 1),
                           np.stack([ub, up, kept[:, 1]], 1)], axis=1).reshape(-1, 3)
    else:
        pieces = np.stack([np.stack([ua, zero, up + kept[:, 0]], 1), np.stack([ub, zero, up + kept[:, 1]], 1)],
                          axis=1).reshape(-1, 3)
    k = 3 if shared else 2
    unit_len = pieces[:, 2].reshape(-1, k).sum(1)
    if config.even == "compute" and shared:  # the replies attend to the one prompt: not a sum of segments' L^2
        raise ConfigError("--even compute for --layout shared-prompt is not built yet; use --even tokens, or "
                          "--layout pairs")
    up_plan = plan(unit_len, config.pack_len, config.algorithm, seed=config.seed, max_segments=None,
                   time_limit=config.time_limit, cp_size=1)
    up_plan, counts["even"] = evened(up_plan, unit_len, config, pieces[:, 2].reshape(-1, k))
    order = (up_plan.order[:, None] * k + np.arange(k)).reshape(-1)
    p = dataclasses.replace(up_plan, order=order.astype(np.int64), offsets=up_plan.offsets * k)
    paired = roles[ua] == CHOSEN
    counts["per_file"] = per_file_counts(lengths, cols["file_index"], np.arange(len(lengths)), pieces,
                                         len(manifest["inputs"]))
    counts["preference"] = {"pairs": int(paired.sum()), "unpaired": int((~paired).sum()),
                            "units_per_pack": len(ua) / max(1, p.num_packs),
                            "shared_prompt_tokens_saved": int(up.sum()) if shared else 0,
                            "prompt_tokens_shareable": int(up.sum())}
    return p, pieces, counts


def evened(p: Plan, lengths: np.ndarray, config: C.PlanConfig, segments: np.ndarray | None = None
           ) -> tuple[Plan, dict]:
    """The plan with its packs' work evened (config.even; packer.build.planners.even) and what it changed: the
    lightest and heaviest pack's work over the mean, before and after. lengths: what each item occupies;
    segments [n, k]: an item's segments where it has several (a preference pair), for the compute work."""
    if config.even == "none":
        return p, {"by": "none"}
    from packer.build.planners.even import even
    from packer.core.cost import CostModel

    lengths = np.asarray(lengths, np.int64)
    model = CostModel(1.0, config.even_attention)
    work = lengths if config.even == "tokens" else model.segment_costs(lengths) if segments is None else \
        model.segment_costs(segments.reshape(-1)).reshape(segments.shape).sum(1)

    def spread(order: np.ndarray, offsets: np.ndarray) -> list[float]:
        if len(offsets) < 2:
            return [1.0, 1.0]
        load = np.add.reduceat(work[order].astype(np.float64), offsets[:-1])
        return [round(float(load.min() / load.mean()), 6), round(float(load.max() / load.mean()), 6)]

    order, offsets = even(p.order, p.offsets, lengths, work, config.pack_len, max_segments=config.max_segments)
    (lightest_before, heaviest_before), (lightest, heaviest) = spread(p.order, p.offsets), spread(order, offsets)
    return dataclasses.replace(p, order=order, offsets=offsets), {
        "by": config.even, "lightest_before": lightest_before, "heaviest_before": heaviest_before,
        "lightest": lightest, "heaviest": heaviest}


def _located(manifest: dict, cols: dict, row: int) -> tuple[str, int | None]:
    """(where, line) of a tokenized row for an InputError: the file and its line (JSON Lines), or the file and
    its row (tables), as the other stages name records."""
    from packer.build.sources import kind_of

    path = manifest["inputs"][int(cols["file_index"][row])]["path"]
    line = int(cols["line"][row])
    return (path, line) if kind_of(path) == "jsonl" else (f"{path}: row {line}", None)


PER_FILE = ("lost_tokens", "truncated_examples", "dropped_examples", "sampled_out_examples", "sampled_out_tokens",
            "repeated_examples", "repeated_tokens")


def per_file_counts(lengths: np.ndarray, file_index: np.ndarray, rows: np.ndarray, pieces: np.ndarray,
                    files: int) -> list[dict[str, int]]:
    """Per input file, what the over-long policy and the mixture did to its examples:

        lost_tokens          tokens the over-long policy took, over every copy (truncated, split pieces
                             dropped, examples dropped)
        truncated_examples   copies kept in part;  dropped_examples: copies of which nothing is kept
        sampled_out_...      examples a weight below 1 left out, and their tokens (not lost to the policy)
        repeated_...         copies beyond the first that a weight above 1 added, and their tokens

    lengths, file_index: per tokenized example; rows: per mixed copy, its tokenized example; pieces: the
    copies' pieces (row = index into rows, start, length), before the rows are mapped back."""
    lengths, file_index = np.asarray(lengths, np.int64), np.asarray(file_index, np.int64)
    kept = np.bincount(pieces[:, 0], weights=pieces[:, 2], minlength=len(rows)).astype(np.int64) if len(pieces) \
        else np.zeros(len(rows), np.int64)
    fi = file_index[rows]
    lost = lengths[rows] - kept
    copies = np.bincount(rows, minlength=len(lengths)) if len(rows) else np.zeros(len(lengths), np.int64)

    def per_file(index: np.ndarray, where: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        w = None if weights is None else weights[where]
        return np.bincount(index[where], weights=w, minlength=files).astype(np.int64)[:files]

    out = {"lost_tokens": per_file(fi, lost > 0, lost), "truncated_examples": per_file(fi, (kept > 0) & (lost > 0)),
           "dropped_examples": per_file(fi, kept == 0), "sampled_out_examples": per_file(file_index, copies == 0),
           "sampled_out_tokens": per_file(file_index, copies == 0, lengths),
           "repeated_examples": per_file(file_index, copies > 1, copies - 1),
           "repeated_tokens": per_file(file_index, copies > 1, (copies - 1) * lengths)}
    return [{name: int(out[name][f]) for name in PER_FILE} for f in range(files)]


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


PLAN_BYTES_PER_EXAMPLE = 100
"""What planning costs the driver per mixed example (docs/SCALE.md: ~100 GB at 1e9 examples)."""


def _check_plan_memory(examples: int) -> None:
    """Refuse, before allocating, a mixture whose plan would need more memory than this machine has."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return  # not knowable here: nothing to compare with
    need = examples * PLAN_BYTES_PER_EXAMPLE
    if need > physical:
        raise ConfigError(f"the mixture's weights ask for {examples:,} examples, whose plan needs about "
                          f"{need / 2**30:,.0f} GiB (~{PLAN_BYTES_PER_EXAMPLE} bytes an example), more than this "
                          f"machine's {physical / 2**30:,.0f} GiB; lower the weights (epochs) or plan on a larger machine")


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
    per_source = np.bincount(source, minlength=len(weights)) if n else np.zeros(len(weights), np.int64)
    _check_plan_memory(sum(int(w) * int(c) + round((w - int(w)) * int(c)) for w, c in zip(weights, per_source)))
    for s, w in enumerate(weights):
        idx = np.flatnonzero(source == s)
        whole, frac = int(w), w - int(w)
        count[idx] = whole
        k = int(round(frac * len(idx)))
        if k:
            rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, s, 0x6D6978]))
            count[idx[rng.choice(len(idx), k, replace=False)]] += 1
    return np.repeat(np.arange(n, dtype=np.int64), count)


def _raise_overlong(manifest: dict, cols: dict, lengths: np.ndarray, pack_len: int) -> None:
    row = int(np.flatnonzero(lengths > pack_len)[0])
    raise InputError(*_located(manifest, cols, row), None,
                     f"example has {int(lengths[row])} tokens, more than --pack-len {pack_len}",
                     "raise --pack-len or pass --overlong truncate, drop or split")
