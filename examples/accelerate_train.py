"""Train a few steps with Hugging Face accelerate on packed shards (CPU works; `accelerate launch` for more).

    python examples/accelerate_train.py RUN_FOLDER [--steps 5]

The loader comes from packer.adapters.accelerate.loader: one rank's share, which prepare() leaves as it
is (it is not a DataLoader), so nothing is sharded twice. Prints the loss of every step.
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator

from packer.adapters.accelerate import batch_to, loader
from packer.loss import token_mean_loss
from packer.train.model import ModelConfig, PackedLlama


def main(argv: list[str] | None = None) -> list[float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    data = loader(accelerator, a.run, 2, flatten=True)
    vocab = int(data.dataset.manifest["tokenizer"]["vocab_size"])
    model = PackedLlama(ModelConfig(vocab_size=vocab, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model, opt, data = accelerator.prepare(model, opt, data)  # data comes back unchanged
    losses: list[float] = []
    while len(losses) < a.steps:
        data.set_epoch(len(losses))
        for batch in data:
            b = batch_to(batch, accelerator.device)
            logits = model(b["input_ids"], b["position_ids"], b["cu_seqlens"], b["max_seqlen"])
            loss = token_mean_loss(logits, b["labels"], b["global_num_loss_tokens"])
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
            accelerator.print(f"step {len(losses)}: loss {loss.item():.4f}")
            if len(losses) == a.steps:
                break
    return losses


if __name__ == "__main__":
    main()
