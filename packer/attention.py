"""Varlen attention at its short, documented path (the code lives in packer.train.attention).

    from packer.attention import varlen_attention
"""

from packer.train.attention import BACKENDS, VarlenAttention, cu_seqlens_from_positions, varlen_attention

__all__ = ["varlen_attention", "VarlenAttention", "BACKENDS", "cu_seqlens_from_positions"]
