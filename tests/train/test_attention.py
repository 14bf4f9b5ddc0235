"""Every available backend against the sdpa reference and a plain fp32 masked-softmax reference."""

from __future__ import annotations

import math

import pytest
import torch

from packer.train.attention import BACKENDS, SUPPORTS, cu_seqlens_from_positions, unavailable, varlen_attention
from packer.core.errors import ConfigError


def reference(q, k, v, cu, causal=True, scale=None, window=None, softcap=None, sinks=None):
    """Dense fp64 attention over the whole pack, written from the definitions (not from the backends):
    a block-diagonal (causal) mask, a left window of `window` keys, tanh soft-capping of the scaled
    scores, and a per-head sink logit in the softmax denominator."""
    total, hq, d = q.shape
    rep = hq // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    seg = torch.repeat_interleave(torch.arange(len(cu) - 1), (cu[1:] - cu[:-1]).long())
    allowed = seg[:, None] == seg[None, :]
    i = torch.arange(total)
    if causal:
        allowed &= i[:, None] >= i[None, :]
    if window is not None:
        allowed &= (i[:, None] - i[None, :]) < window
    s = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * (scale or 1 / math.sqrt(d))
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~allowed, float("-inf"))
    e = (s - s.amax(-1, keepdim=True)).exp()
    denom = e.sum(-1, keepdim=True)
    if sinks is not None:
        denom = denom + (sinks.double()[:, None, None] - s.amax(-1, keepdim=True)).exp()
    return torch.einsum("hqk,khd->qhd", e / denom, v.double()).to(q.dtype)


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


VARIANTS = [
    dict(window=3),
    dict(window=1),                                # each token sees only itself
    dict(window=64),                               # wider than every sequence: plain causal
    dict(softcap=2.0),
    dict(window=4, softcap=1.5),
    dict(sinks=True),
    dict(sinks=True, window=5),
    dict(sinks=True, window=2, softcap=3.0, scale=0.3),
]


def _variant(kw, hq):
    kw = dict(kw)
    if kw.pop("sinks", None):
        kw["sinks"] = torch.linspace(-1.0, 2.0, hq, dtype=torch.float64, requires_grad=True)
    scale = kw.pop("scale", None)
    return kw, scale


@pytest.mark.parametrize("lens,hq,hk", CASES)
@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(kw))
def test_sdpa_variants_match_reference_forward_and_backward(lens, hq, hk, kw):
    torch.manual_seed(3)
    total, d = sum(lens), 8
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(total, h, d, dtype=torch.float64, requires_grad=True) for h in (hq, hk, hk))
    kw, scale = _variant(kw, hq)
    out = varlen_attention(q, k, v, cu, max(lens), softmax_scale=scale, backend="sdpa", **kw)
    ref = reference(q, k, v, cu, scale=scale, **kw)
    assert (out - ref).abs().max() < 1e-10
    leaves = (q, k, v) + ((kw["sinks"],) if "sinks" in kw else ())
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g)):
        assert (a - b).abs().max() < 1e-10


def test_each_variant_changes_the_result():
    """Negative control: dropping any one variant (what the old adapter did) gives different outputs."""
    torch.manual_seed(4)
    lens = [12, 9]
    cu = torch.tensor([0, 12, 21], dtype=torch.int32)
    q, k, v = (torch.randn(21, 4, 8, dtype=torch.float64) * 2 for _ in range(3))
    full = dict(window=3, softcap=1.0, sinks=torch.full((4,), 1.5, dtype=torch.float64))
    out = varlen_attention(q, k, v, cu, max(lens), backend="sdpa", **full)
    for name in full:
        dropped = {n: x for n, x in full.items() if n != name}
        assert (out - varlen_attention(q, k, v, cu, 12, backend="sdpa", **dropped)).abs().max() > 1e-3, name
    scaled = varlen_attention(q, k, v, cu, 12, backend="sdpa", softmax_scale=0.1, **full)
    assert (out - scaled).abs().max() > 1e-3, "softmax_scale must reach the kernel"
    plain_scaled = varlen_attention(q, k, v, cu, 12, backend="sdpa", softmax_scale=0.1)
    assert (plain_scaled - reference(q, k, v, cu, scale=0.1)).abs().max() < 1e-10


@pytest.mark.parametrize("kw", [v for v in VARIANTS if "sinks" not in v], ids=lambda kw: "-".join(kw))
def test_flex_variants_match_reference_forward(kw):
    lens, hq, hk = [17, 4, 4, 4, 30], 6, 2
    torch.manual_seed(5)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(sum(lens), h, 16) for h in (hq, hk, hk))
    kw, scale = _variant(kw, hq)
    out = varlen_attention(q, k, v, cu, max(lens), softmax_scale=scale, backend="flex", **kw)
    assert (out - reference(q, k, v, cu, scale=scale, **kw)).abs().max() < 1e-5


def _fake_flash(calls):
    """flash_attn_varlen_func as flash-attn documents it (window_size=(left, right): query i attends keys
    i - left .. i + right, -1 unbounded; softcap 0 means none), so the mapping Packer passes is checked
    for meaning on CPU, not only for argument names."""

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=None, causal=False,
                               window_size=(-1, -1), softcap=0.0, **extra):
        assert not extra, extra
        calls.append(dict(window_size=window_size, softcap=softcap, causal=causal, scale=softmax_scale))
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32
        left, right = window_size
        total = q.shape[0]
        i = torch.arange(total)
        seg = torch.repeat_interleave(torch.arange(len(cu_q) - 1), (cu_q[1:] - cu_q[:-1]).long())
        ok = seg[:, None] == seg[None, :]
        diff = i[:, None] - i[None, :]
        if causal:
            ok &= diff >= 0
        if left >= 0:
            ok &= diff <= left
        if right >= 0:
            ok &= -diff <= right
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = torch.einsum("qhd,khd->hqk", q, k) * (softmax_scale or q.shape[-1] ** -0.5)
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        return torch.einsum("hqk,khd->qhd", s.masked_fill(~ok, float("-inf")).softmax(-1), v)

    return flash_attn_varlen_func


@pytest.mark.parametrize("kw", [v for v in VARIANTS if "sinks" not in v] + [{}], ids=lambda kw: "-".join(kw))
def test_flash_attn_receives_the_window_and_softcap_it_documents(kw, monkeypatch):
    import sys
    import types

    calls = []
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=_fake_flash(calls)))
    lens, hq, hk = [9, 1, 13], 4, 2
    torch.manual_seed(6)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(sum(lens), h, 8, dtype=torch.float64) for h in (hq, hk, hk))
    kw, scale = _variant(kw, hq)
    out = BACKENDS["flash_attn"](q, k, v, cu, max(lens), True, scale,
                                 __import__("packer.train.attention").train.attention.Variant(**kw))
    assert (out - reference(q, k, v, cu, scale=scale, **kw)).abs().max() < 1e-10
    want_left = kw["window"] - 1 if "window" in kw else -1
    assert calls == [dict(window_size=(want_left, 0), softcap=kw.get("softcap", 0.0), causal=True, scale=scale)]


def test_torch_varlen_receives_the_window(monkeypatch):
    import torch.nn.attention.varlen as tv

    from packer.train.attention import Variant

    calls = []
    fake = _fake_flash(calls)

    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        return fake(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, window_size=window_size)

    monkeypatch.setattr(tv, "varlen_attn", varlen_attn)
    torch.manual_seed(7)
    cu = torch.tensor([0, 10, 16], dtype=torch.int32)
    q, k, v = (torch.randn(16, 2, 8, dtype=torch.float64) for _ in range(3))
    out = BACKENDS["torch_varlen"](q, k, v, cu, 10, True, None, Variant(window=4))
    assert (out - reference(q, k, v, cu, window=4)).abs().max() < 1e-10
    assert calls[0]["window_size"] == (3, 0)
    out = BACKENDS["torch_varlen"](q, k, v, cu, 10, True, None, Variant())
    assert (out - reference(q, k, v, cu)).abs().max() < 1e-10


def test_backends_refuse_variants_they_cannot_compute():
    q = torch.randn(6, 2, 8)
    cu = torch.tensor([0, 6], dtype=torch.int32)
    with pytest.raises(ConfigError, match="'flex' cannot compute.*sinks; use backend='sdpa'"):
        varlen_attention(q, q, q, cu, 6, sinks=torch.zeros(2), backend="flex")
    for name, can in SUPPORTS.items():
        assert "window" in can and (name == "sdpa") == ("sinks" in can)
    with pytest.raises(ConfigError, match="window must be a positive"):
        varlen_attention(q, q, q, cu, 6, window=0)
    with pytest.raises(ConfigError, match="causal attention only"):
        varlen_attention(q, q, q, cu, 6, window=3, causal=False)
    with pytest.raises(ConfigError, match="softcap must be"):
        varlen_attention(q, q, q, cu, 6, softcap=-1.0)
    with pytest.raises(ConfigError, match=r"sinks must be a \(2,\) tensor"):
        varlen_attention(q, q, q, cu, 6, sinks=torch.zeros(3))


def test_auto_picks_a_backend_that_computes_the_variant(monkeypatch):
    import packer.train.attention as A

    monkeypatch.setattr(A, "unavailable", lambda name, q, training: None)  # pretend every backend runs here
    q = torch.randn(4, 2, 8)
    assert A.pick_backend(q, True, A.Variant()) == "flash_attn"
    assert A.pick_backend(q, True, A.Variant(window=3, softcap=2.0)) == "flash_attn"
    assert A.pick_backend(q, True, A.Variant(sinks=torch.zeros(2))) == "sdpa"
    monkeypatch.setattr(A, "unavailable", lambda name, q, training: None if name != "flash_attn" else "no")
    assert A.pick_backend(q, True, A.Variant(window=3)) == "torch_varlen"
    assert A.pick_backend(q, True, A.Variant(softcap=2.0)) == "sdpa"


@pytest.mark.parametrize("backend", sorted(set(BACKENDS) - {"sdpa"}))
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
