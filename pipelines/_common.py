"""What every recipe shares: its command-line arguments, and running the stages through packer.pack."""

from __future__ import annotations

import argparse

from packer.core import config as C
from packer.pipeline import pack
from packer.build.report import summary


def run_stages(inputs: list[str], out: str, tokenizer: str, tcfg: C.TokenizeConfig, pcfg: C.PlanConfig,
               wcfg: C.WriteConfig = C.WriteConfig(), workers: int = 0) -> dict:
    """tokenize -> plan -> write -> report, each stage skipped when already up to date."""
    report = pack(inputs, out, tokenizer=tokenizer, tokenize_config=tcfg, plan_config=pcfg, write_config=wcfg,
                  workers=workers)
    print(summary(report))
    return report


def arguments(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("data", nargs="+", help="JSON Lines, Parquet or Arrow files, globs or URLs "
                                            "(PATH#query=F,response=F,weight=W for per-source options)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default="byte")
    ap.add_argument("--pack-len", type=int, default=2048)
    ap.add_argument("--algorithm", default="ortools")
    ap.add_argument("--workers", type=int, default=0)
    return ap
