"""Efficiency report of a run, computed from the shards themselves (not from the plan's claims)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from packer.bounds import lower_bound
from packer.dataset import PackedShards


def compute(shards_dir: str | Path, seconds: dict[str, float] | None = None) -> dict:
    """Counts and efficiency measured on the shard files, plus the pipeline's loss accounting."""
    ds = PackedShards(shards_dir)
    m = ds.manifest
    L = ds.pack_len
    seg_lens = np.concatenate([s.segment_lengths for s in ds.shards]).astype(np.int64) \
        if ds.shards else np.zeros(0, np.int64)
    pack_tokens = np.concatenate([np.diff(s.pack_token_offsets) for s in ds.shards]) \
        if ds.shards else np.zeros(0, np.int64)
    examples = np.unique(np.concatenate([s.segment_example for s in ds.shards])) \
        if ds.shards else np.zeros(0, np.int64)
    loss_tokens = int(sum(int(s.loss_mask.sum(dtype=np.int64)) for s in ds.shards))
    segs_per_pack = np.concatenate([np.diff(s.pack_segment_offsets) for s in ds.shards]) \
        if ds.shards else np.zeros(0, np.int64)
    tokens = int(seg_lens.sum())
    packs = len(pack_tokens)
    lb = lower_bound(seg_lens, L)
    c = m["counts"]
    return {
        "pack_len": L,
        "algorithm": m["plan"]["algorithm"],
        "optimal": m["plan"]["optimal"],
        "num_examples": int(len(examples)),
        "num_segments": int(len(seg_lens)),
        "num_tokens": tokens,
        "num_loss_tokens": loss_tokens,
        "num_packs": packs,
        "efficiency": tokens / max(1, packs * L),
        "lower_bound_packs": lb,
        "gap_to_bound": (packs - lb) / max(1, lb),
        "max_segments_per_pack": int(segs_per_pack.max()) if packs else 0,
        "records": c["records"],
        "skipped_records": c["skipped_records"],
        "skipped_by_reason": c["skipped_by_reason"],
        "overlong_examples": c["overlong_examples"],
        "truncated_examples": c["truncated_examples"],
        "truncated_tokens": c["truncated_tokens"],
        "dropped_examples": c["dropped_examples"],
        "dropped_tokens": c["dropped_tokens"],
        "split_examples": c["split_examples"],
        "seconds": dict(seconds or {}),
    }


def write(out: str | Path, report: dict) -> Path:
    """Write report.json atomically (temp name, then rename)."""
    path = Path(out) / "report.json"
    tmp = path.with_name(f".report.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def summary(report: dict) -> str:
    """A few lines for the terminal."""
    r = report
    lines = [
        f"examples {r['num_examples']:,}  tokens {r['num_tokens']:,}  loss tokens {r['num_loss_tokens']:,}",
        f"packs {r['num_packs']:,} x {r['pack_len']}  lower bound {r['lower_bound_packs']:,}  "
        f"efficiency {r['efficiency']:.2%}  ({r['algorithm']}, gap {r['gap_to_bound']:.2%})",
    ]
    lost = []
    if r["truncated_examples"]:
        lost.append(f"truncated {r['truncated_examples']:,} examples ({r['truncated_tokens']:,} tokens)")
    if r["dropped_examples"]:
        lost.append(f"dropped {r['dropped_examples']:,} examples")
    if r["skipped_records"]:
        lost.append(f"skipped {r['skipped_records']:,} bad records")
    if lost:
        lines.append("; ".join(lost))
    return "\n".join(lines)
