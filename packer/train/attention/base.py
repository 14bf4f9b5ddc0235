"""What every attention backend shares: the variant a call asks for, and flash-attn's window convention.

Every backend module has the same three names:

    attention(q, k, v, cu_seqlens, max_seqlen, causal, scale, variant) -> (total_q, nheads, headdim)
    SUPPORTS: frozenset of the variants it computes exactly (window, softcap, sinks)
    unavailable(q, training) -> str | None: why it cannot run these tensors here, or None
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Variant:
    """The attention variant one call asks for (see the module docstring); all None is plain attention."""

    window: int | None = None
    softcap: float | None = None
    sinks: torch.Tensor | None = None

    def names(self) -> list[str]:
        """The variants in use, by name."""
        return [n for n in ("window", "softcap", "sinks") if getattr(self, n) is not None]


def window_size(causal: bool, variant: Variant) -> tuple[int, int]:
    """flash-attn's (left, right): a query attends keys i - left .. i + right; -1 is unbounded."""
    left = variant.window - 1 if variant.window is not None else -1
    return (left, 0) if causal else (left, -1)
