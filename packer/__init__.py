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
    "plan": "packer.planner", "Plan": "packer.planner", "ALGORITHMS": "packer.planner",
    "pack": "packer.pipeline",
    "tokenize": "packer.tokenization", "plan_stage": "packer.planner", "write_stage": "packer.shards",
    "PackedShards": "packer.dataset",
    "PackedLoader": "packer.loader",
    "pack_dataset": "packer.inmemory",
    "packed_dataset_from_files": "packer.files",
    "load_tokenizer": "packer.tokenizer", "TokenizerInfo": "packer.tokenizer",
    "ShardSet": "packer.shardset", "Manifest": "packer.manifest",
    "InputSpec": "packer.config", "TokenizeConfig": "packer.config", "PlanConfig": "packer.config",
    "WriteConfig": "packer.config",
    "PackerError": "packer.errors", "InputError": "packer.errors", "FormatError": "packer.errors",
    "ConfigError": "packer.errors",
}

__all__ = sorted(_EXPORTS)


if TYPE_CHECKING:  # what IDEs and type checkers see; at run time the names load on first use
    from packer.config import InputSpec, PlanConfig, TokenizeConfig, WriteConfig
    from packer.dataset import PackedShards
    from packer.errors import ConfigError, FormatError, InputError, PackerError
    from packer.files import packed_dataset_from_files
    from packer.inmemory import pack_dataset
    from packer.loader import PackedLoader
    from packer.pipeline import pack
    from packer.planner import ALGORITHMS, Plan, plan, plan_stage
    from packer.shards import write_stage
    from packer.tokenization import tokenize
    from packer.manifest import Manifest
    from packer.shardset import ShardSet
    from packer.tokenizer import TokenizerInfo, load_tokenizer


def __dir__() -> list[str]:
    """The public API only (not this module's own imports)."""
    return sorted(set(_EXPORTS) | {"__version__"})


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'packer' has no attribute '{name}'")
