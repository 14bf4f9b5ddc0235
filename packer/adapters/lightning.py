"""Lightning: `PackedDataModule`, a LightningDataModule over a Packer run, resumable through its state_dict.

The trainer's global rank and world size pick this process's share (PackedLoader is not a DataLoader,
so Lightning adds no DistributedSampler of its own: nothing is sharded twice). The epoch follows the
trainer's current epoch. `state_dict()` holds the train loader's position, and Lightning saves it in
checkpoints; `load_state_dict()` makes the next train_dataloader() continue from exactly there.
"""

from __future__ import annotations

from typing import Any

import lightning as L

from packer.train.loader import PackedLoader


class PackedDataModule(L.LightningDataModule):
    def __init__(self, train: str, batch_size: int, *, val: str | None = None, **loader_kwargs: Any):
        super().__init__()
        self.train_path, self.val_path, self.batch_size = train, val, batch_size
        self.loader_kwargs = loader_kwargs
        self._train: PackedLoader | None = None
        self._pending: dict | None = None

    def _rank(self) -> tuple[int, int]:
        t = self.trainer
        return (int(t.global_rank), int(t.world_size)) if t is not None else (0, 1)

    def train_dataloader(self) -> PackedLoader:
        rank, world = self._rank()
        if self._train is None:
            self._train = PackedLoader(self.train_path, self.batch_size, rank=rank, world_size=world, **self.loader_kwargs)
        if self._pending is not None:
            self._train.load_state_dict(self._pending)
            self._pending = None
        elif self.trainer is not None:
            self._train.set_epoch(int(self.trainer.current_epoch))
        return self._train

    def val_dataloader(self) -> PackedLoader | list:
        if self.val_path is None:
            return []
        rank, world = self._rank()
        kwargs = {k: v for k, v in self.loader_kwargs.items() if k not in ("shuffle", "drop_last", "seed")}
        return PackedLoader(self.val_path, self.batch_size, rank=rank, world_size=world, eval=True, **kwargs)

    def state_dict(self) -> dict:
        return {"train": self._train.state_dict()} if self._train is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if "train" in state:
            self._pending = dict(state["train"])
