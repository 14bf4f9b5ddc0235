"""Does the loader cost nothing? Batches of [8, 4096] against a plain memcpy of the same bytes.

1. Throughput: padded and flattened batches, in this process and with 2 workers, in batches/s and
   GB/s of batch tensors delivered, against np.copyto of as many bytes from a large source buffer
   (measured in every round of the same run; goal: at least 50% of memcpy). A DataLoader whose
   workers hand over a ready tensor of the same size shows the ceiling of any worker-based loader.
2. Overlap: what the loader costs the training thread per batch when each step waits with the GIL
   released (as on a GPU), without and with the prefetch thread.
3. Rank balance: token imbalance across 8 ranks on GSM8K packs at 4096 (goal: under 1%).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

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


def memcpy_seconds(nbytes: int, src: np.ndarray, reps: int = 300) -> float:
    """Seconds per np.copyto of nbytes into a reused buffer, from a moving offset of a 512 MiB source."""
    dst = np.empty(nbytes, np.uint8)
    t = time.perf_counter()
    for i in range(reps):
        off = (i * nbytes * 7) % (len(src) - nbytes)
        np.copyto(dst, src[off:off + nbytes])
    return (time.perf_counter() - t) / reps


class _HandOver(torch.utils.data.Dataset):
    """The cheapest batch a DataLoader worker can give: one ready shared-memory tensor of nbytes."""

    def __init__(self, nbytes: int, n: int):
        self.nbytes, self.n = nbytes, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        t = torch.empty(self.nbytes // 8, dtype=torch.int64).share_memory_()
        t.fill_(i)
        return {"input_ids": t}


def epoch_seconds(loader, epoch: int) -> float:
    """Seconds per batch over one epoch, after its first batch (which pays for starting workers)."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    it = iter(loader)
    next(it)
    n, t = 0, time.perf_counter()
    for _batch in it:  # held while the next is built, as in a training loop
        n += 1
    return (time.perf_counter() - t) / n


def throughput(run: Path, rounds: int = 5) -> None:
    """Each round times memcpy, then one epoch of every loader; ratios are per round, reported as medians."""
    probe = next(iter(PackedLoader(run, B)))
    nbytes = batch_bytes(probe)
    src = np.random.default_rng(0).integers(0, 255, size=512 * 2**20, dtype=np.uint8)
    loaders = {f"{'flat' if flatten else 'padded'}, workers={w}": PackedLoader(run, B, num_workers=w, flatten=flatten,
                                                                                  verify=False)
               for flatten in (False, True) for w in (0, 2)}
    n_batches = len(loaders["padded, workers=0"])
    loaders["DataLoader hand-over alone, workers=2"] = torch.utils.data.DataLoader(
        _HandOver(nbytes, n_batches), batch_size=None, num_workers=2)
    for ld in loaders.values():  # warm: memory maps touched, kernels compiled
        epoch_seconds(ld, 0)
    sec: dict[str, list[float]] = {"memcpy of the same bytes (baseline)": []}
    ratio: dict[str, list[float]] = {k: [] for k in sec}
    for r in range(rounds):
        base = memcpy_seconds(nbytes, src)
        sec["memcpy of the same bytes (baseline)"].append(base)
        ratio["memcpy of the same bytes (baseline)"].append(1.0)
        for name, ld in loaders.items():
            s = epoch_seconds(ld, r + 1)
            sec.setdefault(name, []).append(s)
            ratio.setdefault(name, []).append(base / s)
    print(f"\n## loader throughput: [{B}, {L}] batches, {nbytes / 2**20:.2f} MiB of tensors each, "
          f"{n_batches} batches an epoch; median of {rounds} rounds (memcpy measured in each round)")
    print(f"{'what':40} {'batches/s':>10} {'GB/s':>7} {'vs memcpy':>10} {'(range)':>13}")
    for name in sec:
        s, q = float(np.median(sec[name])), ratio[name]
        print(f"{name:40} {1 / s:10.0f} {nbytes / s / 1e9:7.2f} {float(np.median(q)):10.2f}"
              f"   {min(q):.2f}-{max(q):.2f}")


def overlap(run: Path, step_s: float = 0.0005, rounds: int = 3) -> None:
    """What the loader costs the training thread when each step waits (GIL released) for step_s, as on
    a GPU: per batch, the loop's time minus the same loop of bare waits, measured in the same round."""
    probe = next(iter(PackedLoader(run, B)))
    nbytes = batch_bytes(probe)
    src = np.random.default_rng(1).integers(0, 255, size=512 * 2**20, dtype=np.uint8)
    loaders = {f"padded, prefetch={d}": PackedLoader(run, B, prefetch=d, verify=False) for d in (0, 2)}
    n = len(loaders["padded, prefetch=0"])
    cost: dict[str, list[float]] = {k: [] for k in loaders}
    base: list[float] = []
    for r in range(rounds):
        base.append(memcpy_seconds(nbytes, src))
        t = time.perf_counter()
        for _ in range(n):
            time.sleep(step_s)
        bare = (time.perf_counter() - t) / n
        for name, ld in loaders.items():
            ld.set_epoch(r)
            t = time.perf_counter()
            for _batch in ld:
                time.sleep(step_s)
            cost[name].append((time.perf_counter() - t) / n - bare)
    print(f"\n## cost on the training thread, each step waiting {step_s * 1e3:.1f} ms with the GIL released "
          f"(median of {rounds} epochs)")
    print(f"{'what':40} {'us/batch':>10} {'memcpy / cost':>14}")
    print(f"{'memcpy of the same bytes (baseline)':40} {np.median(base) * 1e6:10.1f} {1.0:14.2f}")
    for name, c in cost.items():
        med = max(float(np.median(c)), 1e-7)
        print(f"{name:40} {med * 1e6:10.1f} {float(np.median(base)) / med:14.2f}")


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
        run = synthetic_run(Path(tmp))
        throughput(run)
        overlap(run)
    balance()
