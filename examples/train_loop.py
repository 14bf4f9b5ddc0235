"""Train Packer's small Llama-style model for a few steps from packed shards, on CPU.

    python examples/train_loop.py RUN_FOLDER [--steps 5] [--batch-size 2]

RUN_FOLDER is what `packer pack` (or `make pack`) wrote. Prints the loss of every step.
"""

from __future__ import annotations

import argparse

import torch

from packer import PackedLoader
from packer.loss import token_mean_loss
from packer.train.model import ModelConfig, PackedLlama


def main(argv: list[str] | None = None) -> list[float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=2)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    loader = PackedLoader(a.run, a.batch_size, flatten=True)  # one unpadded row per batch
    vocab = int(loader.dataset.manifest["tokenizer"]["vocab_size"])
    model = PackedLlama(ModelConfig(vocab_size=vocab, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses: list[float] = []
    while len(losses) < a.steps:
        loader.set_epoch(len(losses))
        for batch in loader:
            logits = model(batch["input_ids"], batch["position_ids"], batch["cu_seqlens"], batch["max_seqlen"])
            loss = token_mean_loss(logits, batch["labels"], batch["global_num_loss_tokens"])
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
            print(f"step {len(losses)}: loss {loss.item():.4f}  ({batch['num_tokens']} tokens, "
                  f"{len(batch['seq_lens'])} examples)")
            if len(losses) == a.steps:
                break
    return losses


if __name__ == "__main__":
    main()
