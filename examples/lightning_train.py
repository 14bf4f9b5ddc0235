"""Train a few steps with Lightning on packed shards, through packer.adapters.lightning.PackedDataModule.

    python examples/lightning_train.py RUN_FOLDER [--steps 5]

Prints the loss of every step; the data module's state_dict (saved in Lightning checkpoints) resumes
the loader exactly where it stopped.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch

from packer.adapters.lightning import PackedDataModule
from packer.loss import token_mean_loss
from packer.train.model import ModelConfig, PackedLlama


class Module(L.LightningModule):
    def __init__(self, vocab: int):
        super().__init__()
        self.model = PackedLlama(ModelConfig(vocab_size=vocab, hidden=64, layers=2, heads=4, kv_heads=2,
                                             intermediate=128))
        self.losses: list[float] = []
        self.packs: list[list[int]] = []

    def training_step(self, batch, _):
        logits = self.model(batch["input_ids"], batch["position_ids"], batch["cu_seqlens"], batch["max_seqlen"])
        loss = token_mean_loss(logits, batch["labels"], batch["global_num_loss_tokens"])
        self.losses.append(loss.item())
        self.packs.append(batch["pack_index"].tolist())
        print(f"step {len(self.losses)}: loss {loss.item():.4f}")
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def main(argv: list[str] | None = None) -> Module:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    dm = PackedDataModule(a.run, 2, flatten=True)
    vocab = int(__import__("packer").PackedShards(a.run).manifest["tokenizer"]["vocab_size"])
    module = Module(vocab)
    trainer = L.Trainer(max_steps=a.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    return module


if __name__ == "__main__":
    main()
