"""Varlen attention: many sequences packed into one tensor, each attending only to itself.

One function, four backends with one contract (the flash-attention varlen convention)::

    q: (total_q, nheads, headdim)        k, v: (total_k, nheads_k, headdim), nheads % nheads_k == 0
    cu_seqlens: (num_seqs + 1,) int32    sequence i is rows cu_seqlens[i]:cu_seqlens[i+1]
    max_seqlen: int                      the longest sequence
    returns (total_q, nheads, headdim)

Backends, each stating its trade-off:
    flash_attn    flash_attn_varlen_func: fastest; CUDA fp16/bf16 only; `pip install packer[flash]`.
    torch_varlen  torch.nn.attention.varlen.varlen_attn: flash kernels shipped in torch; CUDA only.
    flex          FlexAttention with a document mask: any device for the forward pass; on CPU torch
                  2.13 has no backward, so `auto` never picks it there.
    sdpa          scaled_dot_product_attention over each sequence (equal lengths batched together):
                  runs everywhere with autograd; the reference the others are tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from packer.errors import ConfigError


def _sdpa(q, k, v, cu_seqlens, max_seqlen, causal, scale):
    """Per-sequence SDPA; sequences of equal length go through one batched call."""
    cu = cu_seqlens.tolist()
    lens = [b - a for a, b in zip(cu[:-1], cu[1:])]
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lens):
        if n:
            groups.setdefault(n, []).append(i)
    gqa = q.shape[1] != k.shape[1]
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
        out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale, enable_gqa=gqa)
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


def _flex(q, k, v, cu_seqlens, max_seqlen, causal, scale):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    total = q.shape[0]
    doc = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1, device=q.device),
                                  (cu_seqlens[1:] - cu_seqlens[:-1]).long(), output_size=total)

    def mask(b, h, qi, ki):
        same = doc[qi] == doc[ki]
        return same & (qi >= ki) if causal else same

    block = create_block_mask(mask, None, None, total, total, device=q.device)
    out = flex_attention(*(t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)), block_mask=block, scale=scale,
                         enable_gqa=q.shape[1] != k.shape[1])
    return out.squeeze(0).transpose(0, 1)


def _flash_attn(q, k, v, cu_seqlens, max_seqlen, causal, scale):
    from flash_attn import flash_attn_varlen_func

    cu = cu_seqlens.to(torch.int32)
    return flash_attn_varlen_func(q, k, v, cu, cu, max_seqlen, max_seqlen, softmax_scale=scale, causal=causal)


def _torch_varlen(q, k, v, cu_seqlens, max_seqlen, causal, scale):
    from torch.nn.attention.varlen import varlen_attn

    cu = cu_seqlens.to(torch.int32)
    return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, scale=scale,
                       window_size=(-1, 0) if causal else (-1, -1), enable_gqa=q.shape[1] != k.shape[1])


BACKENDS: dict[str, Callable] = {
    "flash_attn": _flash_attn,
    "torch_varlen": _torch_varlen,
    "flex": _flex,
    "sdpa": _sdpa,
}


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


def pick_backend(q: torch.Tensor, training: bool) -> str:
    """The fastest backend that applies: flash_attn, then torch_varlen, then sdpa."""
    for name in ("flash_attn", "torch_varlen", "sdpa"):
        if unavailable(name, q, training) is None:
            return name
    return "sdpa"


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, *, causal: bool = True, softmax_scale: float | None = None,
                     backend: str = "auto") -> torch.Tensor:
    """Attention within each packed sequence (see the module docstring for shapes).

    Raises ConfigError naming the reason when an explicitly requested backend cannot run here.
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ConfigError(f"q, k, v must be (total, heads, dim); got {tuple(q.shape)}, {tuple(k.shape)}, "
                          f"{tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ConfigError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key/value heads")
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if backend == "auto":
        backend = pick_backend(q, training)
    else:
        why = unavailable(backend, q, training)
        if why is not None:
            raise ConfigError(f"attention backend '{backend}' cannot run here: {why}")
    return BACKENDS[backend](q, k, v, cu_seqlens, int(max_seqlen), causal, softmax_scale)


class VarlenAttention(torch.nn.Module):
    """Module form of `varlen_attention` for models that take packed (total, heads, dim) tensors."""

    def __init__(self, causal: bool = True, softmax_scale: float | None = None, backend: str = "auto"):
        super().__init__()
        self.causal, self.softmax_scale, self.backend = causal, softmax_scale, backend

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> torch.Tensor:
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, causal=self.causal,
                                softmax_scale=self.softmax_scale, backend=self.backend)


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
