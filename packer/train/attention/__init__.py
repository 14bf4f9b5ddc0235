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

import torch

from packer.core.errors import ConfigError
from packer.train.attention import flash, flex, sdpa, torch_varlen
from packer.train.attention.base import Variant

# The family, fastest first (the order `auto` tries); a new backend is one module and one line here.
_MODULES = {"flash_attn": flash, "torch_varlen": torch_varlen, "flex": flex, "sdpa": sdpa}
BACKENDS: dict[str, Callable] = {name: m.attention for name, m in _MODULES.items()}
# Which variants each backend computes exactly; anything else is refused, never approximated.
SUPPORTS: dict[str, frozenset[str]] = {name: m.SUPPORTS for name, m in _MODULES.items()}


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
    if backend not in _MODULES:
        raise ConfigError(f"unknown attention backend '{backend}'; choose auto or one of {', '.join(BACKENDS)}")
    return _MODULES[backend].unavailable(q, training)


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
