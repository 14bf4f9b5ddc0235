"""Does `packer pack`'s memory grow with the data? Peak RSS of the whole run on 1x and 20x the same data.

GSM8K train (GPT-2, Alpaca template, pack length 2048) when ../shared/data has it, else the built-in
synthetic sample with the byte tokenizer. Copy k of the records gets a distinct suffix in its question,
so the 20x set is 20x the tokens, not 20 copies the tokenizer could cache. Each run is its own process;
its peak RSS is read from getrusage in a wrapper process. Goal: 20x within 10% of 1x.

    python benchmarks/bench_memory.py [--times 20] [--input jsonl|parquet]

With --input parquet the same records are written as Parquet (row groups of 8,192 rows): the
tokenize stage reads one row group per task, so memory must not grow with the file either.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WRAP = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def source(tmp: Path) -> tuple[list[str], str, list[str]]:
    """(records as JSON lines, tokenizer, extra CLI args)."""
    gsm, gpt2 = SHARED / "gsm8k" / "train.jsonl", SHARED / "gpt2"
    if gsm.is_file() and gpt2.is_dir():
        return gsm.read_text().splitlines(), str(gpt2), ["--query-field", "question", "--response-field", "answer"]
    subprocess.run([sys.executable, "-m", "packer.cli", "sample", str(tmp / "s.jsonl")], check=True,
                   capture_output=True)
    return (tmp / "s.jsonl").read_text().splitlines(), "byte", []


def run(lines: list[str], times: int, tok: str, extra: list[str], tmp: Path, kind: str = "jsonl"
        ) -> tuple[float, float, int]:
    """(peak RSS MiB, seconds, records) of one `packer pack` over `times` distinct copies of `lines`."""
    data = tmp / f"x{times}.jsonl"
    key = "question" if "--query-field" in extra else "query"
    with open(data, "w") as f:
        for k in range(times):
            for line in lines:
                r = json.loads(line)
                if k:
                    r[key] = f"{r[key]} (variant {k})"
                f.write(json.dumps(r) + "\n")
    if kind == "parquet":  # only the packer process is measured (RUSAGE_CHILDREN), not this conversion
        import pyarrow.json as pj
        import pyarrow.parquet as pq

        table = pj.read_json(data)
        data = data.with_suffix(".parquet")
        pq.write_table(table, data, row_group_size=8192)
        del table
    cmd = [sys.executable, "-c", WRAP, sys.executable, "-m", "packer.cli", "pack", str(data), "--out",
           str(tmp / f"run{times}"), "--tokenizer", tok, "--pack-len", "2048", "--quiet", *extra]
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - t, times * len(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--times", type=int, default=20)
    ap.add_argument("--input", choices=["jsonl", "parquet"], default="jsonl")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        lines, tok, extra = source(tmp)
        base = run(lines, 1, tok, extra, tmp, args.input)
        big = run(lines, args.times, tok, extra, tmp, args.input)
    print(f"\n## Peak RSS of `packer pack` from {args.input} (tokenizer {Path(tok).name})")
    print(f"{'data':>6} {'records':>9} {'seconds':>8} {'peak RSS MiB':>13} {'vs 1x':>6}")
    for name, (rss, sec, n) in (("1x", base), (f"{args.times}x", big)):
        print(f"{name:>6} {n:9,} {sec:8.1f} {rss:13.0f} {rss / base[0]:6.2f}")
    print(f"goal: {args.times}x within 10% of 1x -> {'met' if big[0] <= 1.1 * base[0] else 'NOT met'}")


if __name__ == "__main__":
    main()
