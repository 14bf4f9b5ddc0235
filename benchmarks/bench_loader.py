"""Does the loader cost the training thread nothing? Batches against a plain memcpy of the same bytes.

1. The promise, at every shape (grid): B in 1, 4, 8, 16 x pack length 1024 ... 8192, uint16 and uint32
   tokens, shuffled and in order. For each: a cache-hot np.copyto of the batch's bytes (the baseline,
   measured in the same round); the loader alone (no prefetch: the whole build on the caller's thread);
   and with prefetch=2, the training thread's wait inside next() while each step waits 2 ms with the GIL
   released (as on a GPU), per batch: median and mean over the batches after each epoch's first, and
   the first batch of an epoch on its own. Goal: median wait <= one memcpy of the batch or 5 us,
   whichever is larger. Two floors are timed the same way after the same wait: next() on an
   itertools.repeat (what any call costs on this machine just after a step) and next() on a C queue of
   batch-like dicts that another thread built (the least any background-thread loader can cost).
2. Throughput with worker processes: [8, 4096] batches, padded and flattened, in this process and with
   2 workers, against memcpy (goal: at least 50% of memcpy in this process).
3. Rank balance: token imbalance across 8 ranks on GSM8K packs at 4096 (goal: under 1%).
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from packer.core import config as C
from packer.train.loader import PackedLoader
from packer.pipeline import pack
from packer.build.plan import plan_stage
from packer.build.write import write_stage
from packer.build.tokenize import tokenize
from packer.build.load_tokenizer import load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
B, L = 8, 4096
SIZES, LENGTHS = (1, 4, 8, 16), (1024, 2048, 4096, 8192)
STEP = 0.002  # seconds each training step waits with the GIL released
BATCHES = 240  # batches timed per shape and order (across epochs when an epoch is shorter)
pc = time.perf_counter


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


def wide_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer with 70,000 ids ("w0" ... ): ids over 65,535 make the shards' tokens uint32."""
    words = [f"w{i}" for i in range(69_998)] + ["[UNK]", "</s>"]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return folder


def grid_runs(tmp: Path, tokens: int = 5_000_000) -> dict[tuple[str, int], Path]:
    """{(token width, pack length): run}: documents of SFT-like lengths (lognormal, median ~400 tokens),
    tokenized once per width (bytes -> uint16; 70,000 word ids -> uint32), planned and written per length."""
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(6.0, 0.9, size=tokens // 550), 8, 12_000).astype(int)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz     "))
    texts = {"uint16": ["".join(rng.choice(alphabet, n)) for n in lengths],
             "uint32": [" ".join(f"w{j}" for j in rng.integers(60_000, 69_998, n)) for n in lengths]}
    toks = {"uint16": load_tokenizer("byte"), "uint32": load_tokenizer(str(wide_tokenizer(tmp / "wide")))}
    runs = {}
    for width, docs in texts.items():
        tokenized = tmp / width / "tokenized"
        tokenize([[{"text": t} for t in docs]], tokenized, C.TokenizeConfig(kind="text"), tokenizer=toks[width])
        for n in LENGTHS:
            run = tmp / width / str(n)
            plan_stage(tokenized, run / "plan", C.PlanConfig(pack_len=n, overlong="split", algorithm="bfd"))
            write_stage(tokenized, run / "plan", run / "shards", C.WriteConfig())
            runs[width, n] = run / "shards"
    return runs


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


def hot_memcpy_seconds(nbytes: int, reps: int = 200) -> float:
    """Seconds per np.copyto of nbytes between two buffers already in cache: median of 5 blocks."""
    src, dst = np.ones(nbytes, np.uint8), np.empty(nbytes, np.uint8)
    np.copyto(dst, src)
    blocks = []
    for _ in range(5):
        t = pc()
        for _ in range(reps):
            np.copyto(dst, src)
        blocks.append((pc() - t) / reps)
    return float(np.median(blocks))


def next_seconds(loader: PackedLoader, n: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """(the caller's time inside next() for n batches after each epoch's first, iter() and the first
    next() of each epoch), each step waiting `step` seconds with the GIL released (0: no step, the loader
    alone). `batch = next(it)` rebinds the loop's variable inside the timed span, as a training loop does,
    so dropping the last batch is counted too."""
    steady: list[float] = []
    firsts: list[float] = []
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        t = pc()
        it = iter(loader)  # with prefetch: starts the builder thread
        batch = next(it)
        firsts.append(pc() - t)
        time.sleep(step)
        while len(steady) < n:
            t = pc()
            try:
                batch = next(it)
            except StopIteration:
                break
            steady.append(pc() - t)
            if step:
                time.sleep(step)
        del it, batch
        if len(steady) >= n:
            return np.array(steady), np.array(firsts)
    raise AssertionError("unreachable")


def floor_seconds(n: int) -> np.ndarray:
    """next() on itertools.repeat timed as next_seconds times the loader, after the same step."""
    it, times = itertools.repeat(None), []
    for _ in range(n):
        t = pc()
        _x = next(it)
        times.append(pc() - t)
        time.sleep(STEP)
    return np.array(times)


def handoff_floor_seconds(n: int) -> np.ndarray:
    """The least a background-thread loader can cost: next() on a C queue iterator whose items (dicts of
    six tensors, like batches) another thread built, timed as next_seconds times the loader."""
    import queue
    import threading

    ready: queue.SimpleQueue = queue.SimpleQueue()
    buf = np.zeros(6 * 64, np.int64)
    keep: list[dict] = []

    def build() -> None:
        for _ in range(n + 1):
            item = {f"t{j}": torch.from_numpy(buf[64 * j:64 * (j + 1)]) for j in range(6)}
            keep.append(item)
            ready.put(item)

    thread = threading.Thread(target=build)
    thread.start()
    thread.join()
    it, times = itertools.chain(iter(ready.get, None), ()), []
    batch = next(it)
    for _ in range(n):
        t = pc()
        batch = next(it)
        times.append(pc() - t)
        time.sleep(STEP)
    del batch
    return np.array(times)


def grid(runs: dict[tuple[str, int], Path]) -> None:
    floor, handoff = floor_seconds(BATCHES), handoff_floor_seconds(BATCHES)
    print(f"\n## the promise at every shape: prefetch=2, each step waiting {STEP * 1e3:.0f} ms with the GIL released, "
          f"{BATCHES} batches timed per row")
    print(f"floor (next() on itertools.repeat, timed the same way): median {np.median(floor) * 1e6:.1f} us, "
          f"mean {floor.mean() * 1e6:.1f} us; a hand-over from a C queue of batch-like dicts another thread built: "
          f"median {np.median(handoff) * 1e6:.1f} us, mean {handoff.mean() * 1e6:.1f} us")
    print("goal: median wait <= max(memcpy, 5 us). alone: no prefetch, the build on the caller's thread (median). "
          "wait: median / mean / p90 after each epoch's first batch; first batch: iter() and the first next(), "
          "median over epochs.")
    print(f"| tokens | order | shape | batch KB | memcpy us | alone us | alone/memcpy | wait median us | "
          f"wait mean us | wait p90 us | prefetch=4: median / mean us | first batch us | goal us | wait/goal | met |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    met, rows = 0, 0
    worst: tuple[float, str] = (0.0, "")
    for (width, n), run in runs.items():
        for shuffle in (True, False):
            for size in SIZES:
                alone_ld = PackedLoader(run, size, shuffle=shuffle, verify=False)
                probe = next(iter(alone_ld))
                nbytes = sum(v.numel() * v.element_size() for v in probe.values() if hasattr(v, "numel"))
                del probe
                copy = hot_memcpy_seconds(nbytes)
                alone = float(np.median(next_seconds(alone_ld, BATCHES, 0.0)[0]))
                waits, firsts = next_seconds(PackedLoader(run, size, shuffle=shuffle, prefetch=2, verify=False), BATCHES, STEP)
                deeper, _ = next_seconds(PackedLoader(run, size, shuffle=shuffle, prefetch=4, verify=False), BATCHES, STEP)
                med = float(np.median(waits))
                goal = max(copy, 5e-6)
                ok = med <= goal
                met, rows = met + ok, rows + 1
                label = f"{width} {'shuffled' if shuffle else 'in order'} [{size}, {n}]"
                worst = max(worst, (med / goal, label))
                print(f"| {width} | {'shuffled' if shuffle else 'in order'} | [{size}, {n}] | {nbytes / 1e3:.0f} | "
                      f"{copy * 1e6:.1f} | {alone * 1e6:.1f} | {alone / copy:.2f} | {med * 1e6:.1f} | "
                      f"{waits.mean() * 1e6:.1f} | {np.percentile(waits, 90) * 1e6:.1f} | "
                      f"{np.median(deeper) * 1e6:.1f} / {deeper.mean() * 1e6:.1f} | "
                      f"{np.median(firsts) * 1e6:.0f} | {goal * 1e6:.1f} | {med / goal:.2f} | {'yes' if ok else 'no'} |")
                sys.stdout.flush()
    print(f"goal met at {met} of {rows} rows; largest wait/goal {worst[0]:.2f} ({worst[1]})")


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
        grid(grid_runs(Path(tmp) / "grid"))
        throughput(synthetic_run(Path(tmp)), rounds=3)
    balance()
