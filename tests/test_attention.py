"""Every available backend against the sdpa reference and a plain fp32 masked-softmax reference."""

from __future__ import annotations

import math

import pytest
import torch

from packer.attention import BACKENDS, cu_seqlens_from_positions, unavailable, varlen_attention
from packer.errors import ConfigError


def reference(q, k, v, cu, causal=True, scale=None):
    """Dense fp32 attention with a block-diagonal (causal) mask over the whole pack."""
    total, hq, d = q.shape
    rep = hq // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    seg = torch.repeat_interleave(torch.arange(len(cu) - 1), (cu[1:] - cu[:-1]).long())
    allowed = seg[:, None] == seg[None, :]
    if causal:
        allowed &= torch.arange(total)[:, None] >= torch.arange(total)[None, :]
    s = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * (scale or 1 / math.sqrt(d))
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v.double()).to(q.dtype)


CASES = [
    ([5, 1, 9, 9, 3], 4, 4),   # MHA, a length-1 segment, two equal lengths
    ([1, 1, 1], 4, 2),         # GQA, all length 1
    ([17, 4, 4, 4, 30], 6, 2), # GQA 3:1
]


@pytest.mark.parametrize("lens,hq,hk", CASES)
@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_matches_reference_forward_and_backward(lens, hq, hk, causal):
    torch.manual_seed(0)
    total, d = sum(lens), 8
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(total, h, d, dtype=torch.float64, requires_grad=True) for h in (hq, hk, hk))
    out = varlen_attention(q, k, v, cu, max(lens), causal=causal, backend="sdpa")
    ref = reference(q, k, v, cu, causal)
    assert (out - ref).abs().max() < 1e-10
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    grads_ref = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(grads, grads_ref):
        assert (a - b).abs().max() < 1e-10


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("lens,hq,hk", CASES)
def test_every_available_backend_agrees_with_sdpa(backend, lens, hq, hk):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and backend in ("flash_attn", "torch_varlen") else torch.float32
    torch.manual_seed(1)
    total, d = sum(lens), 16
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q, k, v = (torch.randn(total, h, d, device=device, dtype=dtype) for h in (hq, hk, hk))
    training = device == "cuda"
    why = unavailable(backend, q.requires_grad_(training), training)
    if why:
        pytest.skip(why)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    qs, ks, vs = (t.detach().clone().requires_grad_(training) for t in (q, k, v))
    out = varlen_attention(qs, ks, vs, cu, max(lens), backend=backend)
    qr, kr, vr = (t.detach().float().clone().requires_grad_(training) for t in (q, k, v))
    ref = varlen_attention(qr, kr, vr, cu, max(lens), backend="sdpa")
    assert (out.float() - ref).abs().max() < tol
    if training:
        g = torch.randn_like(ref)
        out.backward(g.to(out.dtype))
        ref.backward(g)
        for a, b in zip((qs, ks, vs), (qr, kr, vr)):
            assert (a.grad.float() - b.grad).abs().max() < tol * 5


def test_no_isolation_is_detected():
    """Negative control: one causal mask over the whole pack lets examples see each other."""
    torch.manual_seed(2)
    cu = torch.tensor([0, 6, 13], dtype=torch.int32)
    q, k, v = (torch.randn(13, 2, 8) for _ in range(3))
    isolated = varlen_attention(q, k, v, cu, 7, backend="sdpa")
    leaky = varlen_attention(q, k, v, torch.tensor([0, 13], dtype=torch.int32), 13, backend="sdpa")
    assert torch.allclose(isolated[:6], leaky[:6], atol=1e-6), "the first example sees nothing earlier anyway"
    assert (isolated[6:] - leaky[6:]).abs().max() > 1e-2, "the second example must differ when it sees the first"


def test_unavailable_backends_say_why():
    q = torch.randn(4, 2, 8, requires_grad=True)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ConfigError, match="flash-attn|fp16 or bf16"):
        varlen_attention(q, q, q, cu, 4, backend="flash_attn")
    with pytest.raises(ConfigError, match="torch_varlen' cannot run here"):
        varlen_attention(q, q, q, cu, 4, backend="torch_varlen")
    with pytest.raises(ConfigError, match="no backward pass on CPU"):
        varlen_attention(q, q, q, cu, 4, backend="flex")
    with pytest.raises(ConfigError, match="choose auto or one of"):
        varlen_attention(q, q, q, cu, 4, backend="magic")
    with pytest.raises(ConfigError, match="not a multiple"):
        varlen_attention(torch.randn(4, 3, 8), torch.randn(4, 2, 8), torch.randn(4, 2, 8), cu, 4)


def test_cu_seqlens_from_positions():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    cu, m = cu_seqlens_from_positions(pos)
    assert cu.tolist() == [0, 3, 5, 6, 12] and m == 6


def test_installed_flash_attn_on_cpu_tensors_says_why(monkeypatch):
    """With flash-attn importable (faked here), CPU or fp32 tensors still get a reason, not a crash."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    assert unavailable("flash_attn", torch.randn(2, 1, 8), False) == "flash-attn needs CUDA tensors in fp16 or bf16"
    assert "CUDA" in unavailable("torch_varlen", torch.randn(2, 1, 8), False)
    cuda_fp32 = types.SimpleNamespace(is_cuda=True, dtype=torch.float32)  # only what the check reads
    assert unavailable("flash_attn", cuda_fp32, True) == "flash-attn needs CUDA tensors in fp16 or bf16"
