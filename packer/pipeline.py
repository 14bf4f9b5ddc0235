"""`pack()`: the three stages in a row, each skipped when its output is already up to date."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from packer.core import config as C
from packer.build import report as R
from packer.core.errors import ConfigError
from packer.core.buildlock import writing
from packer.core.manifest import committed_stamp, remove_stale_temps
from packer.core.executors import Executor, resolve
from packer.build.plan import plan_stage
from packer.core.runstore import publish, publishing, staging
from packer.build.write import write_stage
from packer.core.storage import is_url
from packer.build.tokenize import as_spec, tokenize
from packer.build.load_tokenizer import TokenizerInfo, load_tokenizer


def pack(inputs: Sequence[str | C.InputSpec | Any], out: str | Path, *, tokenizer: str | TokenizerInfo = "byte",
         tokenize_config: C.TokenizeConfig = C.TokenizeConfig(),
         plan_config: C.PlanConfig = C.PlanConfig(),
         write_config: C.WriteConfig = C.WriteConfig(), executor: Executor | str | None = None, workers: int = 0,
         baseline_batch: int = 8, rehash: bool = False, split: str = "train") -> dict:
    """Tokenize, plan and write `inputs` into `out` (tokenized/, plan/, shards/, report.json/.md/.html).

    inputs: paths, globs or URLs with optional per-source options ("a.parquet#weight=0.5"), InputSpecs,
    or Python data (a datasets.Dataset or an iterable of dicts); the inputs' weights become the plan's.

    out may be an object store URL (s3://bucket/run): the stages run in a local staging folder and the
    shards and reports are then published there, the shards manifest last (packer.core.runstore).

    split="eval" packs an evaluation set: packs are written in plan order (no shuffle), and weights or
    epochs other than 1 (repeats) and --overlong drop are refused, so every example is there exactly
    once; read it with PackedLoader(..., eval=True).

    Returns the report. A rerun with the same inputs and configs redoes nothing, except rebuilding a
    stage whose files are missing or changed in size (or, with rehash, in content).
    """
    if split not in ("train", "eval"):
        raise ConfigError(f"split '{split}' is not one of train, eval")
    R.check_baseline_batch(baseline_batch)  # checked before any work, not after the shards are committed
    if split == "eval":
        write_config = _for_eval(inputs, plan_config, write_config)
    if is_url(str(out)):  # an object store: build in the local staging folder, then publish (commit last)
        run = resolve(executor, workers)
        local = staging(str(out))
        # One publisher per URL (a lock object in the store) and one writer of the staging folder, held
        # from the first stage to the commit (so `packer cache prune` leaves the staging folder alone).
        with publishing(str(out), "packer pack"), writing(local, "packer pack"):
            report = pack(inputs, local, tokenizer=tokenizer, tokenize_config=tokenize_config, plan_config=plan_config,
                          write_config=write_config, executor=run, baseline_batch=baseline_batch, rehash=rehash,
                          split=split)
            publish(local, str(out))
        return report
    out = Path(out)
    with writing(out, "packer pack"):  # one writer per run folder, for every stage and the report
        remove_stale_temps(out, locked=True)
        return _pack_local(inputs, out, tokenizer, tokenize_config, plan_config, write_config, executor, workers,
                           baseline_batch, rehash)


def _pack_local(inputs: Sequence[Any], out: Path, tokenizer: str | TokenizerInfo, tokenize_config: C.TokenizeConfig,
                plan_config: C.PlanConfig, write_config: C.WriteConfig, executor: Executor | str | None,
                workers: int, baseline_batch: int, rehash: bool) -> dict:
    """The stages and the report into the local run folder `out` (its writer lock held by the caller)."""
    specs = [as_spec(s, out / "inputs") for s in inputs]
    plan_config = with_weights(plan_config, specs)
    info = tokenizer if isinstance(tokenizer, TokenizerInfo) else load_tokenizer(
        tokenizer, tokenize_config.eos_token, tokenize_config.add_bos)
    run = resolve(executor, workers)  # checked before any work
    details: dict = {}
    seconds = run_stages([
        ("tokenize", out / "tokenized", lambda again: tokenize(
            specs, out / "tokenized", tokenize_config, tokenizer=info, executor=run, rehash=rehash, rebuild=again,
            details=details)),
        ("plan", out / "plan", lambda again: plan_stage(
            out / "tokenized", out / "plan", plan_config, rehash=rehash, rebuild=again)),
        ("write", out / "shards", lambda again: write_stage(
            out / "tokenized", out / "plan", out / "shards", write_config, executor=run, rehash=rehash,
            rebuild=again)),
    ])
    previous = R.load(out).get("tokenizer") if (out / "report.json").is_file() and details.get("backend") is None \
        else None  # the stage was up to date: the backend is the one the earlier run reported
    report = dict(R.compute(out, seconds, baseline_batch), tokenizer=previous or details)
    R.write(out, report)
    return report


def run_stages(stages: Sequence[tuple[str, Path, Callable[[bool], Any]]]) -> dict[str, float]:
    """Run (name, folder, call) stages in order; returns each one's wall seconds (reported, never stored in
    a manifest). call(rebuild) runs the stage; rebuild is True once an earlier stage was committed anew
    (its files were missing, damaged or stale): every stage after it is rebuilt too, even where its own
    files look intact, since they may have been made from the damaged copy."""
    seconds: dict[str, float] = {}
    rebuilt = False
    for name, folder, call in stages:
        before, t = committed_stamp(folder), time.perf_counter()
        call(rebuilt)
        seconds[name] = time.perf_counter() - t
        rebuilt = rebuilt or committed_stamp(folder) != before
    return seconds


def with_weights(plan_config: C.PlanConfig, specs: Sequence[C.InputSpec]) -> C.PlanConfig:
    """The plan config with the inputs' weights (none when every weight is 1); weights given both in
    the plan config and on the inputs are refused, not merged."""
    weights = tuple(float(s.weight) for s in specs)
    if all(w == 1.0 for w in weights):
        return plan_config
    if plan_config.weights and plan_config.weights != weights:
        raise ConfigError("weights are given both on the inputs (#weight=) and in PlanConfig.weights; give them once")
    return replace(plan_config, weights=weights)


def _for_eval(inputs: Sequence[Any], plan_config: C.PlanConfig, write_config: C.WriteConfig) -> C.WriteConfig:
    """An eval set holds every example exactly once: no weights or epochs, nothing dropped, packs in order."""
    weights = list(plan_config.weights) + [float(s.weight) for s in inputs if isinstance(s, C.InputSpec)] + \
        [C.InputSpec.parse(str(s)).weight for s in inputs if isinstance(s, (str, Path))]
    if any(w != 1.0 for w in weights):
        raise ConfigError("split eval: weights or epochs other than 1 would repeat or leave out examples; drop them")
    if plan_config.overlong == "drop":
        raise ConfigError("split eval: --overlong drop leaves examples out of the eval set; use truncate or split")
    return replace(write_config, shuffle=False)
