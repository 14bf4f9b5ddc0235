"""sdpa: scaled_dot_product_attention over each sequence, sequences of equal length batched together.

Trade-off: runs everywhere with autograd and is the reference the other backends are tested against,
but does one call per distinct sequence length. With softcap or sinks it computes the scores
explicitly (the same math as transformers' eager attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from packer.train.attention.base import Variant

SUPPORTS = frozenset({"window", "softcap", "sinks"})


def unavailable(q: torch.Tensor, training: bool) -> str | None:
    """sdpa runs on every device and dtype."""
    return None


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


def attention(q, k, v, cu_seqlens, max_seqlen, causal, scale, variant: Variant):
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
