"""The stage wiring every recipe shares: tokenize -> plan -> write -> report."""

from __future__ import annotations

import argparse
from pathlib import Path

from packer import config as C
from packer import report as R
from packer.planner import plan_stage
from packer.shards import write_stage
from packer.tokenization import tokenize
from packer.tokenizer import load_tokenizer


def run_stages(inputs: list[str], out: str, tokenizer: str, tcfg: C.TokenizeConfig, pcfg: C.PlanConfig,
               wcfg: C.WriteConfig = C.WriteConfig(), workers: int = 0) -> dict:
    out_dir = Path(out)
    info = load_tokenizer(tokenizer, tcfg.eos_token, tcfg.add_bos)
    tokenize([C.InputSpec.parse(i) for i in inputs], out_dir / "tokenized", tcfg, info, workers=workers)
    plan_stage(out_dir / "tokenized", out_dir / "plan", pcfg)
    write_stage(out_dir / "tokenized", out_dir / "plan", out_dir / "shards", wcfg, workers=workers)
    report = R.compute(out_dir)
    R.write(out_dir, report)
    print(R.summary(report))
    return report


def arguments(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("data", nargs="+", help="JSON Lines files (PATH#query=F,response=F for per-file fields)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default="byte")
    ap.add_argument("--pack-len", type=int, default=2048)
    ap.add_argument("--algorithm", default="bfd")
    ap.add_argument("--workers", type=int, default=0)
    return ap
