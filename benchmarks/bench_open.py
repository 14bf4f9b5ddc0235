"""What does checking a run's structure on every open cost? Milliseconds per million packs.

A synthetic shards folder of 2M packs (1-4 segments each, 8-token segments) is opened three ways, each
timed over 5 opens (median): mapping the shards only, the structural checks alone (check_shard),
PackedShards(verify=False) (a whole open: manifest, sizes, headers, offsets and the per-pack index
every open builds; the baseline the others are a share of), and PackedShards(verify=True) after its
first open (the verified-marker skips the hashing).

    python benchmarks/bench_open.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def build(folder: Path, packs: int) -> None:
    from packer.core.formats import shards as fmt
    from packer.core.manifest import commit_stage
    from packer.core.formats.shards import FOLDER_FORMAT as FORMAT, FOLDER_VERSION as VERSION, shard_name

    rng = np.random.default_rng(0)
    per_pack = rng.integers(1, 5, packs)
    segs = int(per_pack.sum())
    lengths = np.full(segs, 8, np.int32)
    seg_off = np.concatenate([[0], np.cumsum(per_pack)])
    tok_off = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])[seg_off]

    def write(tmp: Path) -> dict:
        half = packs // 2
        entries = []
        for i, (a, b) in enumerate(((0, half), (half, packs))):
            sa, sb = seg_off[a], seg_off[b]
            ta, tb = tok_off[a], tok_off[b]
            size = fmt.write_shard(tmp / shard_name(i), pack_len=32, code=1,
                                   tokens=rng.integers(0, 1000, tb - ta).astype(np.uint16),
                                   loss_mask=np.ones(tb - ta, np.uint8), pack_token_offsets=tok_off[a:b + 1] - ta,
                                   pack_segment_offsets=seg_off[a:b + 1] - sa, segment_lengths=lengths[sa:sb],
                                   segment_example=np.arange(sa, sb), segment_start=np.zeros(sb - sa, np.int32))
            entries.append({"file": shard_name(i), "packs": b - a, "segments": int(sb - sa), "tokens": int(tb - ta),
                            "bytes": size, "head_sha256": fmt.head_sha256(tmp / shard_name(i))})
        (tmp / fmt.HEADS).write_bytes(fmt.heads_of([tmp / e["file"] for e in entries]))
        return {"format": FORMAT, "version": VERSION, "digest": "bench", "pack_len": 32,
                "tokenizer": {"vocab_size": 1000, "eos_id": 0}, "shards": entries,
                "counts": {"packs": packs, "segments": segs, "tokens": int(tok_off[-1])}}

    commit_stage(folder, write)


def timed(fn, rounds: int = 5) -> float:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    import os

    from packer.core.formats import shards as fmt
    from packer.train.reader import PackedShards

    packs = 2_000_000
    with tempfile.TemporaryDirectory() as d:
        os.environ.setdefault("PACKER_CACHE", str(Path(d) / "cache"))
        folder = Path(d) / "shards"
        build(folder, packs)
        files = sorted(folder.glob("shard-*.bin"))
        PackedShards(folder, verify=True)  # first open hashes and leaves the marker
        base = timed(lambda: [fmt.open_shard(f) for f in files])
        shards = [fmt.open_shard(f) for f in files]
        checks = timed(lambda: [fmt.check_shard(sh, 32) for sh in shards])
        structure = timed(lambda: PackedShards(folder, verify=False))
        marked = timed(lambda: PackedShards(folder, verify=True))
    per_m = 1e3 * 1e6 / packs
    print(f"\n## Opening a run of {packs:,} packs (median of 5 opens)")
    print(f"{'open':34} {'ms':>8} {'ms per 1M packs':>16} {'of a full open':>14}")
    for name, sec in (("map the shards (baseline)", base), ("  check_shard on them", checks),
                      ("PackedShards(verify=False)", structure),
                      ("PackedShards(verify=True), marked", marked)):
        print(f"{name:34} {sec * 1e3:8.1f} {sec * per_m:16.1f} {sec / structure:14.2f}")


if __name__ == "__main__":
    main()
