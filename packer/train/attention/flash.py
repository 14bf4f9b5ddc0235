"""flash_attn: flash-attention's flash_attn_varlen_func.

Trade-off: the fastest; CUDA fp16/bf16 only, and an optional install (`pip install packer[flash]`).
"""

from __future__ import annotations

import torch

from packer.train.attention.base import Variant, window_size

SUPPORTS = frozenset({"window", "softcap"})


def unavailable(q: torch.Tensor, training: bool) -> str | None:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "flash-attn is not installed (pip install 'packer[flash]')"
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return "flash-attn needs CUDA tensors in fp16 or bf16"
    return None


def attention(q, k, v, cu_seqlens, max_seqlen, causal, scale, variant: Variant):
    from flash_attn import flash_attn_varlen_func

    cu = cu_seqlens.to(torch.int32)
    return flash_attn_varlen_func(q, k, v, cu, cu, max_seqlen, max_seqlen, softmax_scale=scale, causal=causal,
                                  window_size=window_size(causal, variant),
                                  softcap=variant.softcap if variant.softcap is not None else 0.0)
