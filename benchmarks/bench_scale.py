"""How does the cost of `pack` grow with the data, on the local executor and on Ray?

Synthetic SFT records from GSM8K train (GPT-2, pack length 2048; copy k of a record gets a distinct
suffix, so every record is unique and the tokenizer caches nothing) at 4 sizes spanning 32x, each
through the whole pipeline in its own process, on the local executor (2 worker processes) and on a
local Ray cluster (2 CPUs, started before the clock). Printed per run: seconds per stage, peak RSS of
the driver (the process that calls pack) and of the largest worker (sampled every 0.1 s), and tokens
per second per core in the tokenize stage. Then, per executor and stage, the fitted growth exponent
(slope of log seconds over log records: 1.0 is linear) and the driver's bytes per example (slope of
its peak RSS over examples between the smallest and the largest size).

Without ../shared/data the built-in sample and the byte tokenizer stand in.

    python benchmarks/bench_scale.py [--sizes 4000,16000,64000,128000] [--executors local,ray] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("PACKER_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CORES = 2


def records(tmp: Path) -> tuple[list[dict], str, dict]:
    """(base records, tokenizer, field names)."""
    gsm, gpt2 = SHARED / "gsm8k" / "train.jsonl", SHARED / "gpt2"
    if gsm.is_file() and gpt2.is_dir():
        return [json.loads(x) for x in gsm.read_text().splitlines()], str(gpt2), {"query_field": "question",
                                                                                  "response_field": "answer"}
    from packer.build.demo_data import write_sample

    path = write_sample(tmp / "s.jsonl", 2000, 0)
    return [json.loads(x) for x in Path(path).read_text().splitlines()], "byte", {}


def make_data(base: list[dict], n: int, key: str, path: Path) -> None:
    """n unique records: the base records over and over, copy k with ' (variant k)' on its question."""
    with open(path, "w") as f:
        for i in range(n):
            r = dict(base[i % len(base)])
            k = i // len(base)
            if k:
                r[key] = f"{r[key]} (variant {k})"
            f.write(json.dumps(r) + "\n")


def _sample_workers(executor: str, stop: threading.Event, peak: list[int]) -> None:
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        procs = me.children(recursive=True) if executor == "local" else [
            p for p in psutil.process_iter(["name", "cmdline"])
            if (p.info["name"] or "").startswith("ray::") or "default_worker.py" in " ".join(p.info["cmdline"] or [])]
        for p in procs:
            try:
                peak[0] = max(peak[0], p.memory_info().rss)
            except psutil.Error:
                pass
        stop.wait(0.1)


def child(args: argparse.Namespace) -> None:
    """One run, in this process: print a JSON line of its figures."""
    import resource

    from packer.core import config as C
    from packer.pipeline import pack

    fields = json.loads(args.fields)
    if args.executor == "ray":
        import ray

        ray.init(num_cpus=CORES, include_dashboard=False, log_to_driver=False)
        time.sleep(2)  # the worker pool starts before the clock
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_sample_workers, args=(args.executor, stop, peak), daemon=True)
    sampler.start()
    kw = dict(executor="ray") if args.executor == "ray" else dict(workers=CORES)
    report = pack([args.data], args.out, tokenizer=args.tokenizer, tokenize_config=C.TokenizeConfig(**fields),
                  plan_config=C.PlanConfig(pack_len=2048), **kw)
    stop.set()
    sampler.join()
    print(json.dumps({"seconds": report["seconds"], "tokens": report["num_tokens"],
                      "examples": report["num_examples"], "packs": report["num_packs"],
                      "efficiency": report["efficiency"],
                      "driver_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_mb": peak[0] / 2**20}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4000,16000,64000,128000")
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("data", "out", "tokenizer", "executor", "fields"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    executors = args.executors.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base, tok, fields = records(tmp)
        key = fields.get("query_field", "query")
        print(f"{len(base):,} base records, tokenizer {Path(tok).name}, sizes {sizes} ({sizes[-1] / sizes[0]:.0f}x), "
              f"{CORES} cores")
        print(f"| executor | records | tokens | tokenize s | plan s | write s | tok/s/core | driver MB | worker MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n in sizes:
            data = tmp / f"d{n}.jsonl"
            make_data(base, n, key, data)
            for ex in executors:
                out = subprocess.run([sys.executable, __file__, "--child", "--data", str(data), "--out",
                                      str(tmp / f"run-{ex}-{n}"), "--tokenizer", tok, "--executor", ex,
                                      "--fields", json.dumps(fields)], capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{ex} at {n}: {out.stderr[-2000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r.update(executor=ex, records=n)
                s = r["seconds"]
                r["tok_per_s_core"] = r["tokens"] / s["tokenize"] / CORES
                rows.append(r)
                print(f"| {ex} | {n:,} | {r['tokens']:,} | {s['tokenize']:.2f} | {s['plan']:.2f} | {s['write']:.2f} | "
                      f"{r['tok_per_s_core']:,.0f} | {r['driver_mb']:.0f} | {r['worker_mb']:.0f} |", flush=True)
    print("\n| executor | exponent tokenize | plan | write | total | total, two largest sizes | driver bytes/example | "
          "ray / local tokenize s (largest) |")
    print("|---|---|---|---|---|---|---|---|")
    for ex in executors:
        mine = [r for r in rows if r["executor"] == ex]
        x = np.log([r["records"] for r in mine])
        fit = {st: float(np.polyfit(x, np.log([max(r["seconds"][st], 1e-3) for r in mine]), 1)[0])
               for st in ("tokenize", "plan", "write")}
        secs = [sum(r["seconds"].values()) for r in mine]
        total = float(np.polyfit(x, np.log(secs), 1)[0])
        # Fixed costs (process start, imports) flatten the small sizes; the last pair shows the growth alone.
        last = float(np.log(secs[-1] / secs[-2]) / np.log(mine[-1]["records"] / mine[-2]["records"]))
        per_ex = (mine[-1]["driver_mb"] - mine[0]["driver_mb"]) * 2**20 / max(1, mine[-1]["examples"] - mine[0]["examples"])
        ratio = ""
        if ex != "local" and any(r["executor"] == "local" for r in rows):
            ratio = f"{mine[-1]['seconds']['tokenize'] / [r for r in rows if r['executor'] == 'local'][-1]['seconds']['tokenize']:.2f}"
        print(f"| {ex} | {fit['tokenize']:.2f} | {fit['plan']:.2f} | {fit['write']:.2f} | {total:.2f} | {last:.2f} | {per_ex:.0f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
