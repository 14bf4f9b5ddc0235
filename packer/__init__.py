"""Packer: offline packing of LLM training data into verified, memory-mapped shards.

The tree shows the layers; a module imports only from its own layer or below, and build, train and
exports never import each other (the import-linter contracts in pyproject.toml, run by `make test`)::

    entry      cli, pipeline (pack), from_files, from_examples; adapters/ (Lightning, accelerate,
               torchtitan); the short paths hf, attention, loss (re-exports of packer.train)
    build/     sources -> tokenize -> plan (planners/) -> write -> report        no torch
    train/     reader, loader, collate, attention/, loss, model, hf/           torch lives here only
    exports/   one module per export format                                      no torch
    core/      errors, config, formats/ (one module per on-disk format), manifest, storage,
               runstore, cache, buildlock, executors/                            no torch

Data flows one way: source -> Arrow -> plan -> shards -> loader -> model. Public names load lazily,
so `import packer` imports no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "plan": "packer.build.planners", "Plan": "packer.build.planners", "ALGORITHMS": "packer.build.planners",
    "pack": "packer.pipeline",
    "tokenize": "packer.build.tokenize", "plan_stage": "packer.build.plan", "write_stage": "packer.build.write",
    "PackedShards": "packer.train.reader",
    "PackedLoader": "packer.train.loader",
    "pack_dataset": "packer.from_examples",
    "packed_dataset_from_files": "packer.from_files",
    "load_tokenizer": "packer.build.load_tokenizer", "TokenizerInfo": "packer.build.load_tokenizer",
    "ShardSet": "packer.core.formats.shards", "Manifest": "packer.core.manifest",
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
    from packer.build.plan import plan_stage
    from packer.build.planners import ALGORITHMS, Plan, plan
    from packer.build.write import write_stage
    from packer.build.tokenize import tokenize
    from packer.core.manifest import Manifest
    from packer.core.formats.shards import ShardSet
    from packer.build.load_tokenizer import TokenizerInfo, load_tokenizer


def __dir__() -> list[str]:
    """The public API only (not this module's own imports)."""
    return sorted(set(_EXPORTS) | {"__version__"})


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'packer' has no attribute '{name}'")
