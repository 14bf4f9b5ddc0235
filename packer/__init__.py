"""Packer: offline packing of LLM training data into verified, memory-mapped shards.

Public names are imported lazily, so worker processes that only tokenize never import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "plan": "packer.planner", "Plan": "packer.planner", "ALGORITHMS": "packer.planner",
    "pack": "packer.pipeline",
    "tokenize": "packer.tokenization", "plan_stage": "packer.planner", "write_stage": "packer.shards",
    "PackedShards": "packer.dataset",
    "PackedLoader": "packer.loader",
    "pack_dataset": "packer.inmemory",
    "packed_dataset_from_files": "packer.files",
    "load_tokenizer": "packer.tokenizer",
    "InputSpec": "packer.config", "TokenizeConfig": "packer.config", "PlanConfig": "packer.config",
    "WriteConfig": "packer.config",
    "PackerError": "packer.errors", "InputError": "packer.errors", "FormatError": "packer.errors",
    "ConfigError": "packer.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'packer' has no attribute '{name}'")
