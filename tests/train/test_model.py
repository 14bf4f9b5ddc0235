"""Packed training equals training on the examples one by one: the project's model and Hugging Face models."""

from __future__ import annotations

import pytest
import torch

from packer.train.loss import example_mean_loss, token_mean_loss
from packer.train.model import ModelConfig, PackedLlama

LENS = [7, 1, 12, 4]


def examples(vocab: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in LENS]


def packed_inputs(exs):
    ids = torch.cat(exs)[None]
    pos = torch.cat([torch.arange(len(e)) for e in exs])[None]
    cu = torch.tensor([0, *torch.tensor([len(e) for e in exs]).cumsum(0).tolist()], dtype=torch.int32)
    labels = ids.clone()
    labels[0, cu[:-1].long()] = -100  # unshifted convention: a segment's first token is never a target
    return ids, pos, cu, labels


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a: dict, b: dict, rtol: float = 1e-4):
    assert a.keys() == b.keys()
    for n in a:
        scale = b[n].abs().max().clamp_min(1e-12)
        assert (a[n] - b[n]).abs().max() / scale < rtol, n


def test_own_model_packed_equals_unpacked():
    torch.manual_seed(0)
    model = PackedLlama(ModelConfig(vocab_size=97, hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64),
                        backend="sdpa").double()
    exs = examples(97)
    ids, pos, cu, labels = packed_inputs(exs)
    logits = model(ids, pos, cu, max(LENS))
    loss = token_mean_loss(logits, labels)
    loss.backward()
    g_packed = grads(model)
    model.zero_grad()
    total, n, off = 0.0, 0, 0
    for e in exs:
        one = model(e[None], torch.arange(len(e))[None], torch.tensor([0, len(e)], dtype=torch.int32), len(e))
        assert (one[0] - logits[0, off:off + len(e)]).abs().max() < 1e-10
        off += len(e)
        lab = e[None].clone()
        lab[0, 0] = -100
        total = total + token_mean_loss(one, lab, 1.0)  # sums
        n += len(e) - 1
    (total / n).backward()
    assert abs(loss.item() - (total / n).item()) < 1e-10
    assert_same_grads(g_packed, grads(model), 1e-8)


def test_negative_control_one_mask_over_the_pack_is_caught():
    torch.manual_seed(0)
    model = PackedLlama(ModelConfig(vocab_size=97, hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64),
                        backend="sdpa")
    exs = examples(97)
    ids, pos, cu, _ = packed_inputs(exs)
    leaky = model(ids, pos, torch.tensor([0, ids.shape[1]], dtype=torch.int32), ids.shape[1])
    isolated = model(ids, pos, cu, max(LENS))
    assert (leaky[0, LENS[0]:] - isolated[0, LENS[0]:]).abs().max() > 1e-3


def test_losses_under_accumulation_equal_the_whole_batch():
    torch.manual_seed(0)
    logits = torch.randn(1, 24, 11)
    ids, pos, cu, labels = packed_inputs(examples(11))
    labels = torch.cat([labels, torch.full((1, 24 - labels.shape[1]), -100)], 1)
    cu = torch.cat([cu, torch.tensor([24], dtype=torch.int32)])
    whole = token_mean_loss(logits, labels)
    n = int((labels[:, 1:] != -100).sum())
    halves = token_mean_loss(logits[:, :12], labels[:, :12], n) + token_mean_loss(logits[:, 11:], labels[:, 11:], n)
    # the two micro-batches overlap by one position so every target is counted exactly once
    assert torch.allclose(whole, halves, atol=1e-6)
    per_ex = example_mean_loss(logits, labels, cu)
    manual = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        lab = labels[0, a:b]
        if (lab[1:] != -100).any():
            manual.append(torch.nn.functional.cross_entropy(logits[0, a:b - 1], lab[1:], ignore_index=-100))
    assert torch.allclose(per_ex, torch.stack(manual).mean(), atol=1e-6)


@pytest.mark.integration
def test_example_train_loop_learns(tmp_path):
    import runpy
    from pathlib import Path

    from packer.core import config as C
    from packer.pipeline import pack
    from packer.build.demo_data import write_sample

    write_sample(tmp_path / "s.jsonl", n=150)
    pack([str(tmp_path / "s.jsonl")], tmp_path / "run", tokenizer="byte", plan_config=C.PlanConfig(pack_len=512))
    script = Path(__file__).resolve().parents[2] / "examples" / "train_loop.py"
    main = runpy.run_path(str(script))["main"]
    losses = main([str(tmp_path / "run"), "--steps", "8"])
    assert len(losses) == 8 and losses[-1] < losses[0]
