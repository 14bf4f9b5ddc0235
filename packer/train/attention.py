"""Varlen attention: many sequences packed into one tensor, each attending only to itself.

One function, four backends with one contract (the flash-attention varlen convention)::

    q: (total_q, nheads, headdim)        k, v: (total_k, nheads_k, headdim), nheads % nheads_k == 0
    cu_seqlens: (num_seqs + 1,) int32    sequence i is rows cu_seqlens[i]:cu_seqlens[i+1]
    max_seqlen: int                      the longest sequence
    returns (total_q, nheads, headdim)

The attention variants models use, each as the model's config counts it:
    window   left sliding window in tokens: query i attends key j of its own sequence iff
             0 <= i - j < window (transformers' sliding mask; flash-attn window_size=(window - 1, 0)).
             For a pack [a a a b b] and window 2 the allowed (query, key) pairs are::

                 a0: a0            the mask is causal, block-diagonal per sequence
                 a1: a0 a1         and at most `window` keys wide
                 a2:    a1 a2
                 b0:          b0
                 b1:          b0 b1
    softcap  logit soft-capping (Gemma 2): scores -> softcap * tanh(scores / softcap), after scaling.
    sinks    learned per-head sink logits (gpt-oss), (nheads,): one extra softmax column per query
             whose probability is dropped, so a query can attend "nowhere".

Backends, each stating its trade-off, and the variants each can run (`SUPPORTS`):
    flash_attn    flash_attn_varlen_func: fastest; CUDA fp16/bf16 only; `pip install packer[flash]`.
                  window, softcap.
    torch_varlen  torch.nn.attention.varlen.varlen_attn: flash kernels shipped in torch; CUDA only.
                  window.
    flex          FlexAttention with a document mask: any device for the forward pass (on CPU torch
                  2.13 has no backward). Uncompiled it is slower than sdpa, so `auto` never picks
                  it: name it to use it. window, softcap.
    sdpa          scaled_dot_product_attention over each sequence (equal lengths batched together):
                  runs everywhere with autograd; the reference the others are tested against. With
                  softcap or sinks it computes the scores explicitly (same math as transformers'
                  eager attention). window, softcap, sinks.
A backend asked for a variant it cannot run raises ConfigError naming the backends that can; `auto`
picks the fastest backend that runs every requested variant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from packer.core.errors import ConfigError


@dataclass(frozen=True)
class Variant:
    """The attention variant one call asks for (see the module docstring); all None is plain attention."""

    window: int | None = None
    softcap: float | None = None
    sinks: torch.Tensor | None = None

    def names(self) -> list[str]:
        """The variants in use, by name."""
        return [n for n in ("window", "softcap", "sinks") if getattr(self, n) is not None]


def _band(n: int, causal: bool, window: int | None, device) -> torch.Tensor | None:
    """(n, n) bool mask of allowed (query, key) pairs within one sequence, or None for plain causal/full."""
    if window is None or (causal and window >= n):  # a window as long as the sequence changes nothing
        return None
    i = torch.arange(n, device=device)
    d = i[:, None] - i[None, :]
    return (d >= 0) & (d < window)


def _explicit(qs, ks, vs, causal, scale, variant: Variant):
    """Scores computed explicitly: (B, H, n, D) inputs, softcap and sinks applied as transformers' eager does."""
    n, d = qs.shape[-2], qs.shape[-1]
    rep = qs.shape[1] // ks.shape[1]
    if rep > 1:
        ks, vs = ks.repeat_interleave(rep, 1), vs.repeat_interleave(rep, 1)
    s = torch.matmul(qs, ks.transpose(-1, -2)) * (scale if scale is not None else d ** -0.5)
    if variant.softcap is not None:
        s = torch.tanh(s / variant.softcap) * variant.softcap
    allowed = _band(n, causal, variant.window, qs.device)
    if allowed is None and causal:
        allowed = torch.ones(n, n, dtype=torch.bool, device=qs.device).tril()
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    acc = torch.float32 if s.dtype in (torch.float16, torch.bfloat16) else s.dtype  # softmax never below fp32
    if variant.sinks is not None:
        sink = variant.sinks.to(s.dtype).reshape(1, -1, 1, 1).expand(s.shape[0], -1, n, 1)
        s = torch.cat([s, sink], -1)
        s = s - s.max(-1, keepdim=True).values
        p = torch.softmax(s, -1, dtype=acc)[..., :-1]
    else:
        p = torch.softmax(s, -1, dtype=acc)
    return torch.matmul(p.to(vs.dtype), vs)


def _sdpa(q, k, v, cu_seqlens, max_seqlen, causal, scale, variant: Variant):
    """Per-sequence SDPA; sequences of equal length go through one batched call."""
    cu = cu_seqlens.tolist()
    lens = [b - a for a, b in zip(cu[:-1], cu[1:])]
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lens):
        if n:
            groups.setdefault(n, []).append(i)
    gqa = q.shape[1] != k.shape[1]
    explicit = variant.softcap is not None or variant.sinks is not None
    pieces, rows = [], []
    # One SDPA call per distinct length (at most the number of sequences).
    for n, seqs in groups.items():
        if len(seqs) == 1:
            a = cu[seqs[0]]
            idx = None
            qs, ks, vs = (t[a:a + n].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        else:
            starts = torch.tensor([cu[i] for i in seqs], device=q.device)
            idx = (starts[:, None] + torch.arange(n, device=q.device)[None, :]).reshape(-1)
            qs, ks, vs = (t[idx].view(len(seqs), n, t.shape[1], t.shape[2]).transpose(1, 2) for t in (q, k, v))
        if explicit:
            out = _explicit(qs, ks, vs, causal, scale, variant)
        else:
            band = _band(n, causal, variant.window, q.device)
            if band is None:
                out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale, enable_gqa=gqa)
            else:
                out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=band, scale=scale, enable_gqa=gqa)
        pieces.append(out.transpose(1, 2).reshape(-1, q.shape[1], v.shape[2]))
        rows.append(idx if idx is not None else torch.arange(cu[seqs[0]], cu[seqs[0]] + n, device=q.device))
    if not pieces:
        return q.new_zeros(0, q.shape[1], v.shape[2])
    order = torch.cat(rows)
    out = torch.cat(pieces)
    if len(pieces) == 1 and len(order) == q.shape[0]:
        return out
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return out[inverse]


def _flex(q, k, v, cu_seqlens, max_seqlen, causal, scale, variant: Variant):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    total = q.shape[0]
    doc = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1, device=q.device),
                                  (cu_seqlens[1:] - cu_seqlens[:-1]).long(), output_size=total)
    window = variant.window

    def mask(b, h, qi, ki):
        same = doc[qi] == doc[ki]
        if causal:
            same = same & (qi >= ki)
        if window is not None:
            same = same & (qi - ki < window)
        return same

    score_mod = None
    if variant.softcap is not None:
        cap = variant.softcap

        def score_mod(score, b, h, qi, ki):
            return torch.tanh(score / cap) * cap

    block = create_block_mask(mask, None, None, total, total, device=q.device)
    out = flex_attention(*(t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)), score_mod=score_mod,
                         block_mask=block, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    return out.squeeze(0).transpose(0, 1)


def _window_size(causal: bool, variant: Variant) -> tuple[int, int]:
    """flash-attn's (left, right): a query attends keys i - left .. i + right; -1 is unbounded."""
    left = variant.window - 1 if variant.window is not None else -1
    return (left, 0) if causal else (left, -1)


def _flash_attn(q, k, v, cu_seqlens, max_seqlen, causal, scale, variant: Variant):
    from flash_attn import flash_attn_varlen_func

    cu = cu_seqlens.to(torch.int32)
    return flash_attn_varlen_func(q, k, v, cu, cu, max_seqlen, max_seqlen, softmax_scale=scale, causal=causal,
                                  window_size=_window_size(causal, variant),
                                  softcap=variant.softcap if variant.softcap is not None else 0.0)


def _torch_varlen(q, k, v, cu_seqlens, max_seqlen, causal, scale, variant: Variant):
    from torch.nn.attention.varlen import varlen_attn

    cu = cu_seqlens.to(torch.int32)
    return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, scale=scale,
                       window_size=_window_size(causal, variant), enable_gqa=q.shape[1] != k.shape[1])


BACKENDS: dict[str, Callable] = {
    "flash_attn": _flash_attn,
    "torch_varlen": _torch_varlen,
    "flex": _flex,
    "sdpa": _sdpa,
}

# Which variants each backend computes exactly; anything else is refused, never approximated.
SUPPORTS: dict[str, frozenset[str]] = {
    "flash_attn": frozenset({"window", "softcap"}),
    "torch_varlen": frozenset({"window"}),
    "flex": frozenset({"window", "softcap"}),
    "sdpa": frozenset({"window", "softcap", "sinks"}),
}


def unsupported(backend: str, variant: Variant) -> str | None:
    """Why `backend` cannot compute `variant` (naming the backends that can), or None when it can."""
    missing = [n for n in variant.names() if n not in SUPPORTS[backend]]
    if not missing:
        return None
    able = [b for b, s in SUPPORTS.items() if set(variant.names()) <= s]
    return (f"it does not implement {' and '.join(missing)}; use backend={' or '.join(repr(b) for b in able)}"
            if able else f"it does not implement {' and '.join(missing)}")


def unavailable(backend: str, q: torch.Tensor, training: bool) -> str | None:
    """Why `backend` cannot run these tensors here, or None when it can."""
    if backend == "flash_attn":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return "flash-attn is not installed (pip install 'packer[flash]')"
        if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
            return "flash-attn needs CUDA tensors in fp16 or bf16"
        return None
    if backend == "torch_varlen":
        try:
            from torch.nn.attention import varlen  # noqa: F401  (a plain `import torch...` would shadow torch)
        except ImportError:
            return f"torch {torch.__version__} has no torch.nn.attention.varlen"
        if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
            return "torch varlen_attn needs CUDA tensors in fp16 or bf16"
        return None
    if backend == "flex":
        if training and not q.is_cuda:
            return "FlexAttention has no backward pass on CPU in this torch; use sdpa for training"
        return None
    if backend == "sdpa":
        return None
    raise ConfigError(f"unknown attention backend '{backend}'; choose auto or one of {', '.join(BACKENDS)}")


def pick_backend(q: torch.Tensor, training: bool, variant: Variant = Variant()) -> str:
    """The fastest backend that runs here and computes `variant`: flash_attn, then torch_varlen, then sdpa."""
    for name in ("flash_attn", "torch_varlen", "sdpa"):
        if unavailable(name, q, training) is None and unsupported(name, variant) is None:
            return name
    return "sdpa"


def _check_variant(variant: Variant, causal: bool, nheads: int) -> None:
    w = variant.window
    if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
        raise ConfigError(f"window must be a positive number of tokens or None; got {w!r}")
    if w is not None and not causal:
        raise ConfigError("window is implemented for causal attention only; pass causal=True or window=None")
    c = variant.softcap
    if c is not None and not (isinstance(c, (int, float)) and c > 0):
        raise ConfigError(f"softcap must be a positive number or None; got {c!r}")
    s = variant.sinks
    if s is not None and (not isinstance(s, torch.Tensor) or s.shape != (nheads,)):
        shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ConfigError(f"sinks must be a ({nheads},) tensor, one logit per query head; got {shape}")


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, *, causal: bool = True, softmax_scale: float | None = None,
                     window: int | None = None, softcap: float | None = None, sinks: torch.Tensor | None = None,
                     backend: str = "auto") -> torch.Tensor:
    """Attention within each packed sequence (see the module docstring for shapes and variants).

    window: left sliding window in tokens (query i sees keys i - window + 1 .. i), None for none.
    softcap: logit soft-cap, None (or 0, as transformers passes it) for none.
    sinks: (nheads,) sink logits, None for none.

    Raises ConfigError naming the reason when an explicitly requested backend cannot run here or cannot
    compute a requested variant.
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ConfigError(f"q, k, v must be (total, heads, dim); got {tuple(q.shape)}, {tuple(k.shape)}, "
                          f"{tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ConfigError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key/value heads")
    variant = Variant(window=window, softcap=softcap or None, sinks=sinks)
    _check_variant(variant, causal, q.shape[1])
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, sinks) if t is not None)
    if backend == "auto":
        backend = pick_backend(q, training, variant)
    else:
        why = unavailable(backend, q, training)
        if why is not None:
            raise ConfigError(f"attention backend '{backend}' cannot run here: {why}")
        why = unsupported(backend, variant)
        if why is not None:
            raise ConfigError(f"attention backend '{backend}' cannot compute this attention: {why}")
    return BACKENDS[backend](q, k, v, cu_seqlens, int(max_seqlen), causal, softmax_scale, variant)


class VarlenAttention(torch.nn.Module):
    """Module form of `varlen_attention` for models that take packed (total, heads, dim) tensors."""

    def __init__(self, causal: bool = True, softmax_scale: float | None = None, backend: str = "auto",
                 window: int | None = None, softcap: float | None = None):
        super().__init__()
        self.causal, self.softmax_scale, self.backend = causal, softmax_scale, backend
        self.window, self.softcap = window, softcap

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> torch.Tensor:
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, causal=self.causal,
                                softmax_scale=self.softmax_scale, window=self.window, softcap=self.softcap,
                                backend=self.backend)


def cu_seqlens_from_positions(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seqlens int32, max_seqlen) from position ids that restart at 0 for every sequence.

    position_ids: (batch, seq) or (seq,); rows are concatenated, and every row starts a sequence.
    """
    pos = position_ids.reshape(-1)
    starts = torch.nonzero(pos == 0).flatten()
    row_starts = torch.arange(0, pos.numel(), position_ids.shape[-1], device=pos.device)
    starts = torch.unique(torch.cat([starts, row_starts]))
    cu = torch.cat([starts, torch.tensor([pos.numel()], device=pos.device)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max()) if len(cu) > 1 else 0
