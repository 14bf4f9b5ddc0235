"""A minimal Llama-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) on packed input.

It shows what "any torch model" needs to train on packs: rotary positions from `position_ids`
(restarting per example) and attention through `varlen_attention` with `cu_seqlens`. Tokens are
processed flat, (total_tokens, hidden); a [B, pack_len] batch is flattened with its cu_seqlens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from packer.train.attention import VarlenAttention


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 512
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6


def rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate (total, heads, dim) by positions (total,): the half-split (Llama / NeoX) layout."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    ang = pos.to(torch.float32)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None, :], torch.cat([ang, ang], -1).sin()[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rotated = torch.cat([-x2, x1], -1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Block(nn.Module):
    def __init__(self, c: ModelConfig, backend: str):
        super().__init__()
        self.c = c
        self.head_dim = c.hidden // c.heads
        self.norm1 = nn.RMSNorm(c.hidden, eps=c.norm_eps)
        self.norm2 = nn.RMSNorm(c.hidden, eps=c.norm_eps)
        self.q = nn.Linear(c.hidden, c.heads * self.head_dim, bias=False)
        self.k = nn.Linear(c.hidden, c.kv_heads * self.head_dim, bias=False)
        self.v = nn.Linear(c.hidden, c.kv_heads * self.head_dim, bias=False)
        self.o = nn.Linear(c.heads * self.head_dim, c.hidden, bias=False)
        self.gate = nn.Linear(c.hidden, c.intermediate, bias=False)
        self.up = nn.Linear(c.hidden, c.intermediate, bias=False)
        self.down = nn.Linear(c.intermediate, c.hidden, bias=False)
        self.attn = VarlenAttention(causal=True, backend=backend)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cu: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        h = self.norm1(x)
        t = h.shape[0]
        q = rope(self.q(h).view(t, self.c.heads, self.head_dim), pos, self.c.rope_theta)
        k = rope(self.k(h).view(t, self.c.kv_heads, self.head_dim), pos, self.c.rope_theta)
        v = self.v(h).view(t, self.c.kv_heads, self.head_dim)
        x = x + self.o(self.attn(q, k, v, cu, max_seqlen).reshape(t, -1))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class PackedLlama(nn.Module):
    """Decoder-only LM over packed sequences; `forward` returns logits shaped like input_ids + (vocab,)."""

    def __init__(self, config: ModelConfig = ModelConfig(), backend: str = "auto"):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden)
        self.blocks = nn.ModuleList(Block(config, backend) for _ in range(config.layers))
        self.norm = nn.RMSNorm(config.hidden, eps=config.norm_eps)
        self.head = nn.Linear(config.hidden, config.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> torch.Tensor:
        """input_ids, position_ids: (B, S) or (S,) int64; cu_seqlens int32 over the flattened B*S tokens."""
        shape = input_ids.shape
        x = self.embed(input_ids.reshape(-1))
        pos = position_ids.reshape(-1)
        for block in self.blocks:
            x = block(x, pos, cu_seqlens, max_seqlen)
        return self.head(self.norm(x)).view(*shape, -1)
