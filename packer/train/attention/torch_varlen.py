"""torch_varlen: torch.nn.attention.varlen.varlen_attn, the flash kernels shipped in torch.

Trade-off: no extra install, but CUDA fp16/bf16 only and no softcap or sinks.
"""

from __future__ import annotations

import torch

from packer.train.attention.base import Variant, window_size

SUPPORTS = frozenset({"window"})


def unavailable(q: torch.Tensor, training: bool) -> str | None:
    try:
        from torch.nn.attention import varlen  # noqa: F401  (a plain `import torch...` would shadow torch)
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return "torch varlen_attn needs CUDA tensors in fp16 or bf16"
    return None


def attention(q, k, v, cu_seqlens, max_seqlen, causal, scale, variant: Variant):
    from torch.nn.attention.varlen import varlen_attn

    cu = cu_seqlens.to(torch.int32)
    return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, scale=scale,
                       window_size=window_size(causal, variant), enable_gqa=q.shape[1] != k.shape[1])
