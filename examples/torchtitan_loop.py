"""The loop torchtitan's trainer runs, fed by packer.adapters.torchtitan.TitanLoader, for a few CPU steps.

    python examples/torchtitan_loop.py RUN_FOLDER [--steps 5]

TitanLoader yields (input_dict, labels) with pre-shifted labels, as torchtitan's trainer takes them;
input_dict also carries position_ids and cu_seqlens for varlen attention. Prints the loss per step.
"""

from __future__ import annotations

import argparse

import torch

from packer.adapters.torchtitan import TitanLoader
from packer.loss import token_mean_loss
from packer.train.model import ModelConfig, PackedLlama


def main(argv: list[str] | None = None) -> list[float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    data = TitanLoader(a.run, 2)
    vocab = int(data.loader.dataset.manifest["tokenizer"]["vocab_size"])
    model = PackedLlama(ModelConfig(vocab_size=vocab, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses: list[float] = []
    while len(losses) < a.steps:
        for input_dict, labels in data:
            logits = model(input_dict["input"], input_dict["position_ids"], input_dict["cu_seqlens"],
                           input_dict["max_seqlen"])
            loss = token_mean_loss(logits, labels, label_mode="shifted")
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
            print(f"step {len(losses)}: loss {loss.item():.4f}")
            if len(losses) == a.steps:
                break
        data.loader.set_epoch(data.loader.epoch + 1)
    return losses


if __name__ == "__main__":
    main()
