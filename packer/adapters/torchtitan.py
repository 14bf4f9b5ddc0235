"""torchtitan: the dataloader contract its trainer consumes, over a Packer run.

torchtitan's training loop draws `(input_dict, labels)` from its dataloader, with `input_dict["input"]`
the token ids [B, S] and `labels` [B, S] already shifted (labels[:, i] is the target of position i,
-100 where none), and checkpoints the dataloader through `state_dict()` / `load_state_dict()` keyed by
rank (its ParallelAwareDataloader stores `{"dp_rank_R": state}`). TitanLoader gives exactly that from a
PackedLoader built with label_mode="shifted", plus what packed training needs beside the tokens:
`position_ids` restarting at every document and `cu_seqlens` for varlen attention (pass them to a
model whose attention is packer.train.attention.varlen_attention, or build a document mask from them).

torchtitan itself pins versions the rest of the dev install cannot hold (datasets < 4.8), so this
contract is tested without it: the tests check the batch shapes, the shifted labels against
PackedShards, the per-document positions and the per-rank state round trip.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from packer.core.errors import ConfigError
from packer.train.loader import PackedLoader


class TitanLoader:
    """Iterates (input_dict, labels) for data-parallel rank `dp_rank` of `dp_world_size`."""

    def __init__(self, path: str, batch_size: int, *, dp_rank: int = 0, dp_world_size: int = 1, **kwargs: Any):
        if kwargs.get("label_mode", "shifted") != "shifted":
            raise ConfigError("torchtitan takes pre-shifted labels; drop label_mode")
        kwargs.pop("label_mode", None)
        self.dp_rank = dp_rank
        self.loader = PackedLoader(path, batch_size, rank=dp_rank, world_size=dp_world_size, label_mode="shifted",
                                   **kwargs)
        self._key = f"dp_rank_{dp_rank}"

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        for b in self.loader:
            yield {"input": b["input_ids"], "position_ids": b["position_ids"], "cu_seqlens": b["cu_seqlens"],
                   "max_seqlen": b["max_seqlen"]}, b["labels"]

    def state_dict(self) -> dict:
        return {self._key: self.loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self._key not in state:
            raise ConfigError(f"the dataloader state holds {sorted(state)}, not {self._key}: resume with the same "
                              "data-parallel layout")
        self.loader.load_state_dict(state[self._key])
