"""Hugging Face accelerate: a PackedLoader for this process that `accelerator.prepare` will not shard again.

accelerate shards a `torch.utils.data.DataLoader` across processes when it is passed to `prepare()`;
a PackedLoader is already one rank's share, so sharding it again would silently drop data. `loader()`
builds the PackedLoader for `accelerator.process_index` of `accelerator.num_processes`; it is not a
DataLoader, so `prepare()` returns it unchanged (tests check both). Do not wrap it in a DataLoader
before `prepare()`. Batches stay on the CPU: move them with `batch_to(batch, accelerator.device)`.
"""

from __future__ import annotations

from typing import Any

import torch

from packer.core.errors import ConfigError
from packer.train.loader import PackedLoader


def loader(accelerator: Any, path: str, batch_size: int, **kwargs: Any) -> PackedLoader:
    """The PackedLoader of this process (rank and world size from the accelerator); kwargs go to PackedLoader."""
    for key in ("rank", "world_size"):
        if key in kwargs:
            raise ConfigError(f"{key} comes from the accelerator (process_index, num_processes); drop {key}=")
    return PackedLoader(path, batch_size, rank=int(accelerator.process_index),
                        world_size=int(accelerator.num_processes), **kwargs)


def batch_to(batch: dict, device: torch.device | str) -> dict:
    """The batch with its tensors on `device` (ints stay ints)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
