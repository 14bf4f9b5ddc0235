"""`pack()`: the three stages in a row, each skipped when its output is already up to date."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from packer import config as C
from packer import report as R
from packer.executors import Executor, resolve
from packer.planner import plan_stage
from packer.shards import write_stage
from packer.tokenization import tokenize
from packer.tokenizer import TokenizerInfo, load_tokenizer


def pack(inputs: Sequence[str | C.InputSpec], out: str | Path, *, tokenizer: str | TokenizerInfo = "byte",
         tokenize_config: C.TokenizeConfig = C.TokenizeConfig(),
         plan_config: C.PlanConfig = C.PlanConfig(),
         write_config: C.WriteConfig = C.WriteConfig(), executor: Executor | None = None, workers: int = 0,
         baseline_batch: int = 8, rehash: bool = False) -> dict:
    """Tokenize, plan and write `inputs` into `out` (tokenized/, plan/, shards/, report.json/.md/.html).

    Returns the report. A rerun with the same inputs and configs redoes nothing, except rebuilding a
    stage whose files are missing or changed in size (or, with rehash, in content).
    """
    out = Path(out)
    specs = [s if isinstance(s, C.InputSpec) else C.InputSpec.parse(s) for s in inputs]
    info = tokenizer if isinstance(tokenizer, TokenizerInfo) else load_tokenizer(
        tokenizer, tokenize_config.eos_token, tokenize_config.add_bos)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    run = resolve(executor, workers)  # checked before any work
    tokenize(specs, out / "tokenized", tokenize_config, tokenizer=info, executor=run, rehash=rehash)
    seconds["tokenize"] = time.perf_counter() - t
    t = time.perf_counter()
    plan_stage(out / "tokenized", out / "plan", plan_config, rehash=rehash)
    seconds["plan"] = time.perf_counter() - t
    t = time.perf_counter()
    write_stage(out / "tokenized", out / "plan", out / "shards", write_config, executor=run, rehash=rehash)
    seconds["write"] = time.perf_counter() - t
    report = R.compute(out, seconds, baseline_batch)
    R.write(out, report)
    return report
