"""Efficiency reports, computed from the shards themselves (not from the plan's own claims).

`compute()` measures a run: packs, fill, the bound, what was lost (truncated, dropped, skipped) per
input file, and what the two layouts people train with today would cost on the same examples:
every example padded to pack_len, and batches of `baseline_batch` examples padded to their longest.
Speed-ups are estimated in tokens processed and in attention FLOPs (sum of squared row lengths for
padded layouts, of squared example lengths for varlen attention over packs).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np

from packer.build.planners.bounds import lower_bound
from packer.core.config import whole
from packer.core.context_parallel import padded_lengths
from packer.core.errors import FormatError
from packer.core.formats.shards import ShardSet, read_slice, resolve

FIELDS = [  # (key, label, format) for tables
    ("layout", "layout", "{}"), ("algorithm", "algorithm", "{}"), ("pack_len", "pack length", "{:,}"), ("num_examples", "examples", "{:,}"),
    ("num_tokens", "tokens", "{:,}"), ("num_packs", "packs", "{:,}"), ("lower_bound_packs", "lower bound", "{:,}"),
    ("gap_to_bound", "gap to bound", "{:.2%}"), ("efficiency", "efficiency", "{:.2%}"),
    ("optimal", "proven optimal", "{}"), ("plan_budget", "planner budget (deterministic s)", "{}"),
    ("plan_seconds", "plan seconds", "{:.3f}"),
    ("packs_evened", "packs evened (lightest pack's work / mean, before -> after)", "{}"),
    ("max_segments_per_pack", "max examples/pack", "{}"),
    ("truncated_examples", "truncated examples", "{:,}"), ("truncated_tokens", "truncated tokens", "{:,}"),
    ("dropped_examples", "dropped examples", "{:,}"),
    ("tokens_without_left_context", "tokens cut from their left context", "{:,}"),
    ("cp_size", "context-parallel size planned for", "{}"), ("cp_padding_tokens", "context-parallel padding tokens", "{:,}"), ("skipped_records", "skipped records", "{:,}"),
    ("waste_pad_to_pack", "waste, pad to pack", "{:.2%}"), ("waste_pad_to_longest", "waste, pad to longest", "{:.2%}"),
    ("speedup_tokens_vs_pad_to_pack", "speed-up (tokens) vs pad to pack", "{:.2f}x"),
    ("speedup_tokens_vs_pad_to_longest", "speed-up (tokens) vs pad to longest", "{:.2f}x"),
    ("speedup_attention_vs_pad_to_pack", "speed-up (attention) vs pad to pack", "{:.2f}x"),
    ("speedup_attention_vs_pad_to_longest", "speed-up (attention) vs pad to longest", "{:.2f}x"),
]


MAX_BASELINE_BATCH = 1 << 20
"""Examples per batch of the padded-to-longest baseline the report compares with."""


def check_baseline_batch(baseline_batch: int) -> int:
    """The baseline's batch size, checked (before any stage runs: a bad one must not fail after the commit)."""
    return whole("baseline_batch (--baseline-batch)", baseline_batch, 1, MAX_BASELINE_BATCH)


HISTOGRAM_BINS = 256
"""Bins of a report histogram at most: its JSON and its plot stay small at any pack length."""


def _histogram(name: str, values: np.ndarray, top: int) -> dict[str, list[int] | int]:
    """{name: counts, name_bin: width}: values 0..top in at most HISTOGRAM_BINS bins of `width` each."""
    width = max(1, -(-(top + 1) // HISTOGRAM_BINS))
    counts = np.bincount(np.asarray(values, np.int64) // width, minlength=top // width + 1) if len(values) else []
    return {name: list(map(int, counts)), f"{name}_bin": width}


def _cat(parts: list[np.ndarray], dtype=np.int64) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def _tokenized_lengths(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(example_index, file_index, length) of every tokenized example, when the run kept them."""
    if not (run / "tokenized" / "manifest.json").is_file():
        return None
    from packer.core.formats.tokenized import read_columns

    cols = read_columns(run / "tokenized", ("example_index", "file_index", "length"))
    return cols["example_index"], cols["file_index"], cols["length"]


def compute(path: str | Path, seconds: dict[str, float] | None = None, baseline_batch: int = 8) -> dict:
    """The report of a run folder (or a shards folder: then without the per-file loss accounting)."""
    check_baseline_batch(baseline_batch)
    shards_dir = resolve(path)
    run = shards_dir.parent if shards_dir.name == "shards" else shards_dir
    ds = ShardSet(shards_dir)
    m, L = ds.manifest, ds.pack_len
    seg_lens = _cat([s.segment_lengths for s in ds.shards])
    seg_example = _cat([s.segment_example for s in ds.shards])
    pack_tokens = _cat([np.diff(s.pack_token_offsets) for s in ds.shards])
    segs_per_pack = _cat([np.diff(s.pack_segment_offsets) for s in ds.shards])
    seg_loss = _cat([_segment_loss(s) for s in ds.shards])
    loss_tokens = int(seg_loss.sum())
    tokens, packs = int(seg_lens.sum()), len(pack_tokens)
    # The bound of what was packed: segments as they occupy a pack (cp padding), and the max_segments cap.
    plan_cfg = (m.get("config") or {}).get("plan") or {}
    lb = lower_bound(padded_lengths(seg_lens, ds.cp_size), L)
    if plan_cfg.get("max_segments") and len(seg_lens):
        lb = max(lb, -(-len(seg_lens) // int(plan_cfg["max_segments"])))
    # Baselines on the same examples as trained (after truncation), in data order.
    order = np.argsort(seg_example, kind="stable")
    in_order = seg_lens[order].astype(np.float64)
    n = len(in_order)
    pad_pack_tokens = n * L
    starts = np.arange(0, n, baseline_batch)
    batch_max = np.maximum.reduceat(in_order, starts) if n else np.zeros(0)
    batch_rows = np.diff(np.append(starts, n))
    pad_longest_tokens = float((batch_max * batch_rows).sum())
    packed_tokens = packs * L
    attn_packed = float((seg_lens.astype(np.float64) ** 2).sum())
    attn_pack = n * float(L) ** 2
    attn_longest = float((batch_rows * batch_max ** 2).sum())
    c = m["counts"]
    report = {
        "pack_len": L, "algorithm": m["plan"]["algorithm"], "optimal": m["plan"]["optimal"],
        "plan_budget": m["plan"].get("time_limit"),
        "even": m["plan"].get("even") or {"by": "none"},
        "packs_evened": _evened(m["plan"].get("even") or {}),
        "layout": ds.layout, "cp_size": ds.cp_size,
        "cp_padding_tokens": int(c.get("cp_padding_tokens", 0)),
        # Segments that continue an example cut before them (wrapped layout, --overlong split): their
        # tokens are trained without the context the cut removed.
        "tokens_without_left_context": int(_cat([s.segment_lengths[np.asarray(s.segment_start) > 0]
                                                 for s in ds.shards]).sum()),
        "num_examples": int(len(np.unique(seg_example))), "num_segments": n, "num_tokens": tokens,
        "num_loss_tokens": loss_tokens, "num_packs": packs, "efficiency": tokens / max(1, packed_tokens),
        "lower_bound_packs": lb, "gap_to_bound": (packs - lb) / max(1, lb),
        "max_segments_per_pack": int(segs_per_pack.max()) if packs else 0,
        "records": c["records"], "skipped_records": c["skipped_records"],
        "skipped_by_reason": c["skipped_by_reason"], "overlong_examples": c["overlong_examples"],
        "truncated_examples": c["truncated_examples"], "truncated_tokens": c["truncated_tokens"],
        "dropped_examples": c["dropped_examples"], "dropped_tokens": c["dropped_tokens"],
        "split_examples": c["split_examples"],
        **({"preference": dict(c["preference"], tokens=tokens,
                               tokens_without_sharing=tokens + int(c["preference"]["shared_prompt_tokens_saved"]))}
           if c.get("preference") else {}),
        **({"images": _images(ds)} if ds.images_meta is not None else {}),
        "baseline_batch": baseline_batch,
        "waste_pad_to_pack": 1 - tokens / max(1, pad_pack_tokens),
        "waste_pad_to_longest": 1 - tokens / max(1.0, pad_longest_tokens),
        "waste_packed": 1 - tokens / max(1, packed_tokens),
        "speedup_tokens_vs_pad_to_pack": pad_pack_tokens / max(1, packed_tokens),
        "speedup_tokens_vs_pad_to_longest": pad_longest_tokens / max(1, packed_tokens),
        "speedup_attention_vs_pad_to_pack": attn_pack / max(1.0, attn_packed),
        "speedup_attention_vs_pad_to_longest": attn_longest / max(1.0, attn_packed),
        "seconds": dict(seconds or {}),
        "plan_seconds": (seconds or {}).get("plan"),
        "per_file": _per_file(run, m, seg_example, seg_lens),
        "per_source": _per_source(run, m, seg_example, seg_lens, seg_loss),
        # At most HISTOGRAM_BINS bins each, whatever the pack length: bin i counts values in [i*w, (i+1)*w).
        "histograms": {
            **_histogram("example_length", seg_lens, L),
            # packs by fill, in whole percent (0..100)
            "pack_fill_percent": np.bincount((pack_tokens * 100) // L, minlength=101).tolist() if packs else [],
            **_histogram("segments_per_pack", segs_per_pack, int(segs_per_pack.max()) if packs else 0),
        },
    }
    return report


def _images(ds: ShardSet, world: int = 4) -> dict:
    """Runs with images: images, vision patches per pack, and how evenly a step's patches land on `world`
    ranks (one pack each, snake-dealt by patches, the loader's balance='patches')."""
    per_pack = []
    count = 0
    for sh, im in zip(ds.shards, ds.images):
        grid = im.image_grid.reshape(-1, 3).astype(np.int64)
        per_image = np.concatenate([grid.prod(axis=1), [0]])
        count += len(grid)
        seg = np.add.reduceat(per_image, im.segment_image_offsets[:-1]) * (np.diff(im.segment_image_offsets) > 0)
        if sh.num_packs:
            per_pack.append(np.add.reduceat(seg, sh.pack_segment_offsets[:-1]))
    pp = _cat(per_pack)
    steps = len(pp) // world
    if steps:
        load = np.sort(pp[: steps * world].reshape(steps, world), axis=1)  # in pack order: one step's packs
        ratio = load.max(axis=1) / np.maximum(1, load.mean(axis=1))
    else:
        ratio = np.ones(1)
    return {"images": count, "vision_patches": int(pp.sum()), "patches_per_pack_mean": float(pp.mean()) if len(pp) else 0.0,
            "patches_per_pack_max": int(pp.max()) if len(pp) else 0, "vision_step_max_over_mean": float(ratio.mean()),
            "vision_balance_ranks": world}


def images_line(v: dict) -> str:
    return (f"images: {v['images']:,} ({v['vision_patches']:,} vision patches; per pack mean "
            f"{v['patches_per_pack_mean']:.0f}, max {v['patches_per_pack_max']:,}); vision patches per step over "
            f"{v['vision_balance_ranks']} ranks, one pack each: max/mean {v['vision_step_max_over_mean']:.3f}")


def labels(paths: list[str]) -> list[str]:
    """Short names that tell the paths apart: each path's shortest tail of components unique among them
    (gsm8k/train.jsonl and math/train.jsonl, not train.jsonl twice)."""
    parts = [str(p).rstrip("/").split("/") for p in paths]
    out = []
    for mine in parts:
        for k in range(1, len(mine) + 1):
            tail = mine[-k:]
            if sum(other[-k:] == tail for other in parts) == 1 or k == len(mine):
                out.append("/".join(tail))
                break
    return out


def _per_file(run: Path, m: dict, seg_example: np.ndarray, seg_lens: np.ndarray) -> list[dict]:
    """Per input file: records, skipped, examples and tokens trained (repeats included), what the over-long
    policy took (lost_tokens, truncated and dropped copies: the plan's per-file counts), and what the
    mixture did (examples sampled out by a weight below 1, copies repeated by a weight above 1)."""
    inputs = m["inputs"]
    bounds = np.cumsum([0] + [int(i["records"]) for i in inputs])
    kept_file = np.searchsorted(bounds, seg_example, side="right") - 1
    policy = m["counts"].get("per_file") or [{} for _ in inputs]
    tok = _tokenized_lengths(run)
    out = []
    for f, (meta, name, mix) in enumerate(zip(inputs, labels([i["path"] for i in inputs]), policy)):
        mine = kept_file == f
        row = {"path": meta["path"], "label": name, "records": int(meta["records"]), "skipped": int(meta["skipped"]),
               "examples": int(len(np.unique(seg_example[mine]))), "tokens": int(seg_lens[mine].sum()), **mix}
        if tok is not None:
            ex, fi, length = tok
            sel = fi == f
            row["tokenized_examples"] = int(sel.sum())
            row["tokenized_tokens"] = int(length[sel].sum())
        out.append(row)
    return out


def _segment_loss(shard, block: int = 1 << 20) -> np.ndarray:
    """int64 [segments]: loss tokens of each segment of a shard (segments lie in order in its tokens).

    Summed `block` tokens at a time: numpy's reduceat would otherwise widen the whole mapped uint8 mask
    to the sum's dtype first (8 bytes a token), and memory must not grow with the data.
    """
    lens = np.asarray(shard.segment_lengths, np.int64)
    ends = np.cumsum(lens)
    starts = ends - lens
    out = np.zeros(len(lens), np.int64)
    a = 0
    while a < len(lens):  # per block of segments: a handful of iterations per shard
        b = max(a + 1, int(np.searchsorted(ends, starts[a] + block, side="right")))
        lo, hi = int(starts[a]), int(ends[b - 1])
        mask = read_slice(shard, "loss_mask", lo, hi)  # read, not mapped: RSS stays one block
        out[a:b] = np.add.reduceat(mask.astype(np.int32), starts[a:b] - lo)
        a = b
    return out


def _per_source(run: Path, m: dict, seg_example: np.ndarray, seg_lens: np.ndarray, seg_loss: np.ndarray
                ) -> list[dict]:
    """Per input source (each path, glob or URL given): what it holds, what was trained, and the share
    of loss tokens its weight asks for (weight x its tokenized loss tokens, normalized) beside the
    share achieved in the shards (after sampling, repeats and the over-long policy)."""
    sources = m.get("sources") or []
    inputs = m["inputs"]
    tok = _tokenized_lengths(run)
    if not sources or tok is None:
        return []
    weights = (m.get("config", {}).get("plan", {}).get("weights") or [1.0] * len(sources))
    ex, fi, _ = tok
    order = np.argsort(ex, kind="stable")
    file_of = np.asarray([int(i.get("source", 0)) for i in inputs], np.int64)
    seg_file = fi[order][np.searchsorted(ex[order], seg_example)] if len(seg_example) else np.zeros(0, np.int64)
    seg_source = file_of[seg_file] if len(seg_file) else seg_file
    asked = np.array([w * sum(int(inputs[f].get("loss_tokens", 0)) for f in s.get("files", []))
                      for w, s in zip(weights, sources)], np.float64)
    total_loss = max(1, int(seg_loss.sum()))
    out = []
    for k, (w, s) in enumerate(zip(weights, sources)):
        files = s.get("files", [])
        mine = seg_source == k
        out.append({
            "path": s.get("path"), "weight": float(w),
            "records": sum(int(inputs[f]["records"]) for f in files),
            "examples": sum(int(inputs[f]["examples"]) for f in files),
            "tokens": sum(int(inputs[f]["tokens"]) for f in files),
            "loss_tokens": sum(int(inputs[f].get("loss_tokens", 0)) for f in files),
            "trained_examples": int(mine.sum()), "trained_tokens": int(seg_lens[mine].sum()),
            "trained_loss_tokens": int(seg_loss[mine].sum()),
            "share_asked": float(asked[k] / asked.sum()) if asked.sum() else 0.0,
            "share_achieved": float(seg_loss[mine].sum() / total_loss),
        })
    return out


def write(out: str | Path, report: dict) -> Path:
    """Write report.json, report.md and report.html, each atomically (temp name, then rename)."""
    out = Path(out)
    files = {"report.json": json.dumps(report, indent=2, sort_keys=True) + "\n",
             "report.md": markdown(report), "report.html": to_html(report)}
    for name, text in files.items():
        tmp = out / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    return out / "report.json"


def load(path: str | Path) -> dict:
    """A run's report.json (path: the run folder or the file); FormatError when it is missing or unreadable."""
    p = Path(path)
    p = p / "report.json" if p.is_dir() else p
    hint = "run `packer report RUN` to write it again"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(str(p), "no report.json", "run `packer pack` or `packer report` there first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(str(p), f"unreadable report ({getattr(e, 'msg', type(e).__name__)})", hint) from None
    if not isinstance(data, dict):
        raise FormatError(str(p), f"unreadable report (a JSON {type(data).__name__}, not an object)", hint)
    return data


def evened_line(ev: dict) -> str | None:
    """The terminal's line on PlanConfig.even (a plan manifest's `plan.even`), or None when nothing was evened."""
    if ev.get("by", "none") == "none":
        return None
    return (f"packs evened by {ev['by']}: lightest {ev['lightest_before']:.3f} -> {ev['lightest']:.3f} of the mean, "
            f"heaviest {ev['heaviest_before']:.3f} -> {ev['heaviest']:.3f}")


def _evened(ev: dict) -> str:
    """The report's one-cell account of PlanConfig.even."""
    if ev.get("by", "none") == "none":
        return "no"
    return f"by {ev['by']}: {ev['lightest_before']:.3f} -> {ev['lightest']:.3f}"


def _cell(report: dict, key: str, fmt: str) -> str:
    v = report.get(key)
    return "-" if v is None else fmt.format(v)


def summary(report: dict) -> str:
    """A few lines for the terminal."""
    r = report
    lines = [
        f"examples {r['num_examples']:,}  tokens {r['num_tokens']:,}  loss tokens {r['num_loss_tokens']:,}",
        f"packs {r['num_packs']:,} x {r['pack_len']}  lower bound {r['lower_bound_packs']:,}  "
        f"efficiency {r['efficiency']:.2%}  ({r['algorithm']}"
        + (f", budget {r['plan_budget']:.3g} s" if r.get("plan_budget") is not None else "")
        + f", gap {r['gap_to_bound']:.2%})",
        f"vs padding every example to {r['pack_len']}: {r['speedup_tokens_vs_pad_to_pack']:.1f}x fewer tokens; "
        f"vs batches of {r['baseline_batch']} padded to the longest: {r['speedup_tokens_vs_pad_to_longest']:.2f}x",
    ]
    if evened_line(r.get("even") or {}):
        lines.append(evened_line(r["even"]))
    tk = r.get("tokenizer") or {}
    if tk.get("backend"):
        checked = f", {tk['spans_checked']:,} of {tk['spans']:,} spans checked against {tk['reference']}" \
            if tk["backend"] != "tokenizers" else ""
        lines.append(f"tokenizer backend: {tk['backend']} {tk['version']}{checked} ({tk['reason']})")
    lost = []
    if r["truncated_examples"]:
        lost.append(f"truncated {r['truncated_examples']:,} examples ({r['truncated_tokens']:,} tokens)")
    if r["dropped_examples"]:
        lost.append(f"dropped {r['dropped_examples']:,} examples")
    if r["skipped_records"]:
        lost.append(f"skipped {r['skipped_records']:,} bad records")
    if lost:
        lines.append("; ".join(lost))
    if len(r.get("per_source") or []) > 1:
        lines += [f"  {p['path']}: weight {p['weight']:g}, {p['trained_loss_tokens']:,} loss tokens, share "
                  f"{p['share_achieved']:.1%} (asked {p['share_asked']:.1%})" for p in r["per_source"]]
    if r.get("preference"):
        lines.append(preference_line(r["preference"]))
    if r.get("images"):
        lines.append(images_line(r["images"]))
    return "\n".join(lines)


def preference_line(p: dict) -> str:
    """Pairs, unpaired completions, pairs per pack and what a shared prompt saved."""
    saved = p["shared_prompt_tokens_saved"]
    shared = (f"; shared prompts saved {saved:,} tokens ({saved / max(1, p['tokens_without_sharing']):.1%})" if saved
              else f"; --layout shared-prompt would save {p['prompt_tokens_shareable']:,} tokens")
    return (f"preference: {p['pairs']:,} pairs, {p['unpaired']:,} unpaired completions, "
            f"{p['units_per_pack']:.2f} per pack{shared}")


def markdown(report: dict) -> str:
    rows = "\n".join(f"| {label} | {_cell(report, key, fmt)} |" for key, label, fmt in FIELDS)
    files = "\n".join("| " + " | ".join(_file_cell(f, k, fmt) for k, _, fmt in FILE_COLUMNS) + " |"
                       for f in report["per_file"])
    secs = ", ".join(f"{k} {v:.2f} s" for k, v in report["seconds"].items()) or "-"
    text = (f"# Packing report\n\n| metric | value |\n|---|---|\n{rows}\n\nStage times: {secs}\n\n"
            f"## Per input file\n\n| " + " | ".join(label for _, label, _ in FILE_COLUMNS) + " |\n"
            f"|{'---|' * len(FILE_COLUMNS)}\n{files}\n")
    if report.get("per_source"):
        text += ("\n## Per source (mixture)\n\n" + "\n".join(source_table(report["per_source"])) + "\n")
    if report.get("preference"):
        text += f"\n## Preference data\n\n{preference_line(report['preference'])}\n"
    if report.get("images"):
        text += f"\n## Images\n\n{images_line(report['images'])}\n"
    return text


FILE_COLUMNS = [("path", "file", "{}"), ("records", "records", "{:,}"), ("skipped", "skipped", "{:,}"),
                ("examples", "examples", "{:,}"), ("tokens", "tokens trained", "{:,}"),
                ("lost_tokens", "tokens lost (over-long)", "{:,}"), ("dropped_examples", "dropped", "{:,}"),
                ("sampled_out_examples", "sampled out", "{:,}"), ("repeated_examples", "repeats", "{:,}")]


def _file_cell(row: dict, key: str, fmt: str) -> str:
    return "-" if row.get(key) is None else fmt.format(row[key])


SOURCE_COLUMNS = [("path", "source", "{}"), ("weight", "weight", "{:g}"), ("records", "records", "{:,}"),
                  ("examples", "examples", "{:,}"), ("tokens", "tokens", "{:,}"), ("loss_tokens", "loss tokens", "{:,}"),
                  ("trained_examples", "trained examples", "{:,}"), ("trained_loss_tokens", "trained loss tokens", "{:,}"),
                  ("share_asked", "share asked", "{:.2%}"), ("share_achieved", "share achieved", "{:.2%}")]


def source_table(rows: list[dict]) -> list[str]:
    """The per-source rows as a markdown table: asked vs achieved share of loss tokens."""
    head = "| " + " | ".join(label for _, label, _ in SOURCE_COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(SOURCE_COLUMNS)]
    lines += ["| " + " | ".join(f.format(r[k]) for k, _, f in SOURCE_COLUMNS) + " |" for r in rows]
    return lines


def to_html(report: dict) -> str:
    """A self-contained page: the table, the per-file table and the plots as inline SVG."""
    from packer.build.plots import report_plots

    rows = "".join(f"<tr><th>{html.escape(label)}</th><td>{html.escape(_cell(report, key, fmt))}</td></tr>"
                   for key, label, fmt in FIELDS)
    files = "".join("<tr>" + "".join(f"<td>{html.escape(_file_cell(f, k, fmt))}</td>" for k, _, fmt in FILE_COLUMNS)
                    + "</tr>" for f in report["per_file"])
    mix = ""
    if report.get("per_source"):
        mix = "<h2>Per source (mixture)</h2><table><tr>" + "".join(
            f"<th>{html.escape(label)}</th>" for _, label, _ in SOURCE_COLUMNS) + "</tr>" + "".join(
            "<tr>" + "".join(f"<td>{html.escape(f.format(r[k]))}</td>" for k, _, f in SOURCE_COLUMNS) + "</tr>"
            for r in report["per_source"]) + "</table>"
    file_head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in FILE_COLUMNS)
    imgs = "".join(f"<figure>{svg}<figcaption>{html.escape(t)}</figcaption></figure>" for t, svg in report_plots(report))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Packer report</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}figure{{display:inline-block;margin:.5em}}
svg{{max-width:100%;height:auto}}</style></head><body><h1>Packing report</h1><table>{rows}</table>
<h2>Per input file</h2><table><tr>{file_head}</tr>{files}</table>{mix}<h2>Plots</h2>{imgs}</body></html>
"""


def compare_table(reports: list[tuple[str, dict]], fmt: str = "text") -> str:
    """Side-by-side table of several runs: text (terminal), markdown or html."""
    names = [n for n, _ in reports]
    rows = [(label, [_cell(r, key, f) for _, r in reports]) for key, label, f in FIELDS]
    if fmt == "markdown":
        head = "| metric | " + " | ".join(names) + " |\n|---|" + "---|" * len(names)
        return head + "\n" + "\n".join(f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows) + "\n"
    if fmt == "html":
        head = "<tr><th>metric</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
        body = "".join(f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                       + "</tr>" for label, cells in rows)
        return f'<!doctype html><html><head><meta charset="utf-8"><title>Packer comparison</title></head>' \
               f"<body><table border=1>{head}{body}</table></body></html>\n"
    width = max(len(label) for label, _ in rows)
    cols = [max(len(n), *(len(c[i]) for _, c in rows)) for i, n in enumerate(names)]
    lines = [" " * width + "  " + "  ".join(n.rjust(w) for n, w in zip(names, cols))]
    lines += [label.ljust(width) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, cols)) for label, cells in rows]
    return "\n".join(lines) + "\n"
