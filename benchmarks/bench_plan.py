"""How fast and how good are the planners? One table each for scale, TRL, and GSM8K quality.

1. bfd / ffd / nextfit / ortools on 1e5, 1e6, 1e7 lognormal lengths (mean ~370, pack length 4096):
   seconds, nanoseconds per item (flat across sizes = linear) and packs against the bound
   (ortools: time limit 10 s, 30 s at 1e7).
2. bfd against TRL's bfd on the same 1e6 lengths (skipped when trl is not installed).
3. GSM8K train (GPT-2, Alpaca) at 1024, 2048, 4096: packs against the lower bound, every algorithm
   (skipped when ../shared/data is absent).

    python benchmarks/bench_plan.py [--constants]

--constants prints only the measurements behind packer/build/planners/ortools.py's constants: the subset sum's cost
per call, step and cell (a least-squares fit; the budget charges these, so plans never depend on the
clock), and CP-SAT merges of the g emptiest BFD packs for g = 2..10 (how often one pack is saved,
items in the model, deterministic and wall seconds).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import packer
from packer.build.planners.bounds import lower_bound

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def lognormal(n: int, pack_len: int = 4096, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(300), 0.65, size=n), 1, pack_len).astype(np.int64)


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def scale() -> None:
    print("\n## 1. scale: lognormal lengths, pack length 4096 (plan() includes the bound)")
    print(f"{'n':>10} {'algorithm':>9} {'seconds':>8} {'ns/item':>8} {'packs':>10} {'vs bound':>8}")
    for n in (100_000, 1_000_000, 10_000_000):
        lengths = lognormal(n)
        for algo in ("bfd", "ffd", "nextfit", "ortools"):
            limit = 30 if n == 10_000_000 else 10
            sec, p = timed(lambda: packer.plan(lengths, 4096, algo, time_limit=limit if algo == "ortools" else None),
                           1 if n == 10_000_000 or algo == "ortools" else 3)
            print(f"{n:>10,} {algo:>9} {sec:8.3f} {sec / n * 1e9:8.1f} {p.num_packs:>10,} "
                  f"{p.num_packs / p.lower_bound:8.4f}")
    print(f"(mean length {lognormal(10_000_000).mean():.0f})")


def versus_trl() -> None:
    print("\n## 2. bfd vs TRL's bfd, the same 1,000,000 lengths, pack length 4096")
    try:
        import pyarrow as pa
        from trl.data_utils import _pack_bfd
    except ImportError:
        print("skipped: trl is not installed (pip install trl)")
        return
    lengths = lognormal(1_000_000)
    # TRL packs a table; a one-int32-per-token column is the least it needs.
    values = pa.array(np.zeros(int(lengths.sum()), np.int32))
    table = pa.table({"input_ids": pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)), values)})
    t_trl, out = timed(lambda: _pack_bfd(table, 4096), 1)
    trl_packs = len(out)
    t_ours, p = timed(lambda: packer.plan(lengths, 4096, "bfd"))
    print(f"{'planner':>12} {'seconds':>8} {'packs':>8}")
    print(f"{'trl bfd':>12} {t_trl:8.3f} {trl_packs:>8,}")
    print(f"{'packer bfd':>12} {t_ours:8.3f} {p.num_packs:>8,}")
    print(f"speed-up {t_trl / t_ours:.0f}x, packs {p.num_packs - trl_packs:+d}")


def gsm8k() -> None:
    print("\n## 3. GSM8K train, GPT-2, Alpaca: packs against the lower bound")
    gsm, gpt2 = SHARED / "gsm8k" / "train.jsonl", SHARED / "gpt2"
    if not (gsm.is_file() and gpt2.is_dir()):
        print("skipped: ../shared/data absent")
        return
    import tempfile

    from packer.core import config as C
    from packer.build.tokenize import tokenize
    from packer.core.formats.tokenized import read_columns
    from packer.build.load_tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenize([C.InputSpec(str(gsm), "question", "answer")], Path(tmp) / "t", C.TokenizeConfig(),
                 tokenizer=load_tokenizer(str(gpt2)))
        lengths = read_columns(Path(tmp) / "t", ["length"])["length"]
    print(f"{'pack_len':>8} {'bound':>6} " + " ".join(f"{a:>20}" for a in packer.ALGORITHMS))
    for L in (1024, 2048, 4096):
        cells = []
        for algo in packer.ALGORITHMS:
            p = packer.plan(lengths, L, algo, time_limit=10 if algo == "ortools" else None)
            cells.append(f"{p.num_packs:>5} {p.gap:+6.2%} {p.seconds:4.2f}s")
        print(f"{L:>8} {lower_bound(lengths, L):>6} " + " ".join(f"{c:>20}" for c in cells))
    print("(cells: packs, gap to the bound, planning seconds)")


def constants() -> None:
    from packer.build.planners import ortools as S
    print("\n## subset-sum cost (the refill's budget): least-squares fit over rooms 64..32768")
    rng = np.random.default_rng(0)
    rows, times = [], []
    for room in (64, 512, 4096, 32768, 131072):
        for k in (5, 50, 300, 1000):
            cand = sorted(set(rng.integers(1, room, size=k).tolist()), reverse=True)
            counts = [int(c) for c in rng.integers(1, 5, size=len(cand))]
            charges: list[float] = []
            budget = S._Budget(1e18)
            budget.charge = charges.append  # record the work, not the time
            S._subset_sum(room, cand, counts, budget)
            steps = len(charges) - 1
            cells = sum(c - S.STEP_SECONDS for c in charges[1:]) * S.CELLS_PER_SECOND
            sec, _ = timed(lambda: [S._subset_sum(room, cand, counts, S._Budget(1e18)) for _ in range(20)], 3)
            rows.append((1.0, steps, cells))
            times.append(sec / 20)
    call, step, cell = np.linalg.lstsq(np.asarray(rows), np.asarray(times), rcond=None)[0]
    print(f"{'':>10} {'measured':>10} {'solver.py':>10}")
    print(f"{'per call':>10} {call:10.1e} {S.CALL_SECONDS:10.1e}")
    print(f"{'per step':>10} {step:10.1e} {S.STEP_SECONDS:10.1e}")
    print(f"{'cells/s':>10} {1 / cell:10.1e} {S.CELLS_PER_SECOND:10.1e}")

    print("\n## CP-SAT: merge g packs into g - 1 (the g emptiest of next-fit's packs of 3,000 lognormal lengths,"
          " pack 4096; 5 seeds)")
    print(f"{'g':>3} {'saved':>6} {'items':>6} {'det. s':>7} {'wall s':>7}")
    for g in range(2, 13):
        saved, items, det, wall = 0, 0, 0.0, 0.0
        for seed in range(5):
            lengths = lognormal(3_000, seed=seed)
            p = packer.plan(lengths, 4096, "nextfit")
            packs = sorted((lengths[p.order[a:b]].tolist() for a, b in zip(p.offsets[:-1], p.offsets[1:])), key=sum)
            tail = packs[:g]
            items += sum(len(p) for p in tail)
            budget = S._Budget(S.CPSAT_CALL_SECONDS)
            t = time.perf_counter()
            merged = S._cpsat_merge(tail, 4096, len(lengths) + 1, budget, 0)
            wall += time.perf_counter() - t
            det += S.CPSAT_CALL_SECONDS - budget.left
            saved += merged is not None
        print(f"{g:>3} {saved:>4}/5 {items / 5:6.0f} {det / 5:7.3f} {wall / 5:7.3f}")
    print(f"(solver.py: groups {S.GROUP_MIN}..{S.GROUP_MAX}, at most {S.MAX_MODEL_ITEMS} items, "
          f"{S.CPSAT_CALL_SECONDS} deterministic s a call)")


if __name__ == "__main__":
    if "--constants" in sys.argv:
        constants()
        sys.exit(0)
    scale()
    versus_trl()
    gsm8k()
    sys.stdout.flush()
