"""flex: FlexAttention with a document mask.

Trade-off: any device for the forward pass (on CPU torch 2.13 has no backward); uncompiled it is
slower than sdpa, so `auto` never picks it: name it to use it.
"""

from __future__ import annotations

import torch

from packer.train.attention.base import Variant

SUPPORTS = frozenset({"window", "softcap"})


def unavailable(q: torch.Tensor, training: bool) -> str | None:
    if training and not q.is_cuda:
        return "FlexAttention has no backward pass on CPU in this torch; use sdpa for training"
    return None


def attention(q, k, v, cu_seqlens, max_seqlen, causal, scale, variant: Variant):
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
