"""transformers models with attn_implementation="packer": packed == unpacked (CPU, fp32, random init)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from packer.hf import batch_to_kwargs, register  # noqa: E402

LENS = [7, 1, 12, 4]
SMALL = dict(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def make(family: str, attn: str):
    cfg_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}[family]
    extra = {"sliding_window": None} if family in ("mistral", "qwen2") else {}
    cfg = cfg_cls(**SMALL, **extra, attention_dropout=0.0)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)
    return model.float().eval()


def examples():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 101, (n,), generator=g) for n in LENS]


def param_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("via", ["position_ids", "cu_seqlens"])
def test_packed_equals_unpacked(family, via, monkeypatch):
    import packer.hf

    register()
    calls = []
    real = packer.hf.varlen_attention
    monkeypatch.setattr(packer.hf, "varlen_attention", lambda *a, **k: calls.append(a[3].tolist()) or real(*a, **k))
    exs = examples()
    ids = torch.cat(exs)[None]
    pos = torch.cat([torch.arange(len(e)) for e in exs])[None]
    cu = torch.tensor([0, *torch.tensor(LENS).cumsum(0).tolist()], dtype=torch.int32)
    labels = ids.clone()
    labels[0, cu[:-1].long()] = -100
    packed = make(family, "packer")
    kw = {"input_ids": ids, "position_ids": pos, "labels": labels}
    if via == "cu_seqlens":
        kw = batch_to_kwargs({"input_ids": ids, "position_ids": pos, "labels": labels, "cu_seqlens": cu,
                              "max_seqlen": max(LENS)})
    out = packed(**kw)
    out.loss.backward()
    g_packed = param_grads(packed)
    assert calls and all(c == cu.tolist() for c in calls), "every layer attends through packer with the packs' bounds"

    plain = make(family, "eager")
    n_targets = sum(n - 1 for n in LENS)
    total = 0.0
    off = 0
    for e in exs:
        o = plain(input_ids=e[None], labels=e[None])
        assert (o.logits[0] - out.logits[0, off:off + len(e)]).abs().max() < 1e-5, "per-example logits"
        off += len(e)
        if len(e) > 1:
            total = total + o.loss * (len(e) - 1)
    loss = total / n_targets
    loss.backward()
    assert abs(loss.item() - out.loss.item()) < 1e-5
    g_plain = param_grads(plain)
    assert g_packed.keys() == g_plain.keys()
    for name in g_plain:
        scale = g_plain[name].abs().max().clamp_min(1e-12)
        assert (g_packed[name] - g_plain[name]).abs().max() / scale < 1e-4, name


def test_without_isolation_examples_leak():
    """Negative control: the same model with one causal mask over the pack differs from unpacked."""
    register()
    exs = examples()
    ids = torch.cat(exs)[None]
    leaky = make("llama", "eager")(input_ids=ids, position_ids=torch.cat([torch.arange(len(e)) for e in exs])[None])
    alone = make("llama", "eager")(input_ids=exs[2][None])
    a = LENS[0] + LENS[1]
    assert (leaky.logits[0, a:a + LENS[2]] - alone.logits[0]).abs().max() > 1e-3
