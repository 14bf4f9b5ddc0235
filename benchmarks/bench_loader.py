"""Does the loader cost nothing? Batches of [8, 4096] against a plain memcpy of the same bytes.

1. Throughput: padded and flattened batches, in this process and with 2 workers, in batches/s and
   GB/s of batch tensors delivered, against np.copyto of as many bytes from a large source buffer
   (measured in the same run; goal: at least 50% of memcpy).
2. Rank balance: token imbalance across 8 ranks on GSM8K packs at 4096 (goal: under 1%).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from packer import config as C
from packer.loader import PackedLoader
from packer.pipeline import pack

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
B, L = 8, 4096


def synthetic_run(tmp: Path) -> Path:
    """~2,400 packs of 4096 byte-tokens from generated documents of varied length."""
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "pack", "token", "shard", "loader"])
    with open(tmp / "docs.jsonl", "w") as f:
        for n in np.clip(rng.lognormal(5.0, 0.8, size=40_000), 5, 3000).astype(int):
            f.write(json.dumps({"text": " ".join(rng.choice(words, size=n // 6 + 1))}) + "\n")
    pack([str(tmp / "docs.jsonl")], tmp / "run", tokenizer="byte", tokenize_config=C.TokenizeConfig(kind="text"),
         plan_config=C.PlanConfig(pack_len=L, overlong="split"))
    return tmp / "run"


def batch_bytes(batch: dict) -> int:
    return sum(v.numel() * v.element_size() for v in batch.values() if hasattr(v, "numel"))


def throughput(run: Path) -> None:
    rows = []
    probe = next(iter(PackedLoader(run, B)))
    nbytes = batch_bytes(probe)
    src = np.random.default_rng(0).integers(0, 255, size=512 * 2**20, dtype=np.uint8)
    dst = np.empty(nbytes, np.uint8)
    reps = 400
    t = time.perf_counter()
    for i in range(reps):
        off = (i * nbytes * 7) % (len(src) - nbytes)
        np.copyto(dst, src[off:off + nbytes])
    memcpy = (time.perf_counter() - t) / reps
    rows.append(("memcpy of the same bytes (baseline)", memcpy))
    for flatten in (False, True):
        for workers in (0, 2):
            ld = PackedLoader(run, B, num_workers=workers, flatten=flatten, verify=False)
            n, busy, t_all = 0, 0.0, time.perf_counter()
            for epoch in range(2):
                ld.set_epoch(epoch)
                it = iter(ld)
                next(it)  # the first batch pays for starting worker processes
                n += 1
                t = time.perf_counter()
                for _ in it:
                    n += 1
                busy += time.perf_counter() - t
            steady = busy / (n - 2)
            total = (time.perf_counter() - t_all) / n
            name = f"{'flat' if flatten else 'padded'}, workers={workers}"
            rows.append((f"{name}, steady state", steady))
            if workers:
                rows.append((f"{name}, incl. worker start", total))
    print(f"\n## loader throughput: [{B}, {L}] batches, {nbytes / 2**20:.2f} MiB of tensors each")
    print(f"{'what':40} {'batches/s':>10} {'GB/s':>7} {'vs memcpy':>10}")
    for what, sec in rows:
        print(f"{what:40} {1 / sec:10.0f} {nbytes / sec / 1e9:7.2f} {memcpy / sec:10.2f}")


def balance() -> None:
    print("\n## rank balance: GSM8K train, GPT-2, pack length 4096, batch 1 per rank")
    gsm, gpt2 = SHARED / "gsm8k" / "train.jsonl", SHARED / "gpt2"
    if not (gsm.is_file() and gpt2.is_dir()):
        print("skipped: ../shared/data absent")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for algo in ("bfd", "ortools"):
            pack([f"{gsm}#query=question,response=answer"], Path(tmp) / algo, tokenizer=str(gpt2),
                 plan_config=C.PlanConfig(pack_len=L, algorithm=algo))
            for ranks, bs in ((8, 1), (8, 4)):
                for cost in ("tokens", "attention"):
                    imb = PackedLoader(Path(tmp) / algo, bs, world_size=ranks, balance=cost).imbalance()
                    print(f"{algo:8} ranks={ranks} batch={bs} balance={cost:9}  per-step mean {imb['step_mean']:.3%}"
                          f"  worst step {imb['step_max']:.3%}  epoch {imb['epoch']:.3%}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        throughput(synthetic_run(Path(tmp)))
    balance()
