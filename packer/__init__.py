"""Packer: offline packing of LLM training data into verified, memory-mapped shards.

Layers, highest first; a module imports only from its own layer or below (the import-linter
contracts in pyproject.toml, run by `make test`, fail on any import that points up)::

    entry      cli; files, inmemory, hf_verify; pipeline
    runtime    loader > collate, prefetch > dataset                 torch lives on this side only
    model      loss, hf > model > attention, families
    stage 3    report > shards, plots                               reads shards through shardset
    stage 2    planner > solver > binpack, bounds
    stage 1    tokenization > sources/ (jsonl, table, python), templates, tokenizer, sample
               , mixture > chats, storage
    core       shardset > format, manifest, labels > config > errors, ranges, progress, executor

Building shards (pipeline and everything below it) never imports torch or numba, and the runtime
and model never import a stage (they read what stages wrote through shardset and format).
Public names are imported lazily, so `import packer` imports no torch either.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "plan": "packer.build.plan", "Plan": "packer.build.plan", "ALGORITHMS": "packer.build.plan",
    "pack": "packer.pipeline",
    "tokenize": "packer.build.tokenize", "plan_stage": "packer.build.plan", "write_stage": "packer.build.write",
    "PackedShards": "packer.train.reader",
    "PackedLoader": "packer.train.loader",
    "pack_dataset": "packer.from_examples",
    "packed_dataset_from_files": "packer.from_files",
    "load_tokenizer": "packer.build.tokenizer", "TokenizerInfo": "packer.build.tokenizer",
    "ShardSet": "packer.core.shardset", "Manifest": "packer.core.manifest",
    "InputSpec": "packer.core.config", "TokenizeConfig": "packer.core.config", "PlanConfig": "packer.core.config",
    "WriteConfig": "packer.core.config",
    "PackerError": "packer.core.errors", "InputError": "packer.core.errors", "FormatError": "packer.core.errors",
    "ConfigError": "packer.core.errors",
}

__all__ = sorted(_EXPORTS)


if TYPE_CHECKING:  # what IDEs and type checkers see; at run time the names load on first use
    from packer.core.config import InputSpec, PlanConfig, TokenizeConfig, WriteConfig
    from packer.train.reader import PackedShards
    from packer.core.errors import ConfigError, FormatError, InputError, PackerError
    from packer.from_files import packed_dataset_from_files
    from packer.from_examples import pack_dataset
    from packer.train.loader import PackedLoader
    from packer.pipeline import pack
    from packer.build.plan import ALGORITHMS, Plan, plan, plan_stage
    from packer.build.write import write_stage
    from packer.build.tokenize import tokenize
    from packer.core.manifest import Manifest
    from packer.core.shardset import ShardSet
    from packer.build.tokenizer import TokenizerInfo, load_tokenizer


def __dir__() -> list[str]:
    """The public API only (not this module's own imports)."""
    return sorted(set(_EXPORTS) | {"__version__"})


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'packer' has no attribute '{name}'")
