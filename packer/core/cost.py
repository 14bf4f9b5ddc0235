"""What a packed step really costs: a x tokens + b x sum over segments of L x min(L, window), from a model's
config (the balance PackedLoader(balance=cost_model(config)) spreads across ranks).

A token costs its matmuls (attention projections, the MLP or its active experts, the LM head), whatever
example it is in; attention costs each query one key per earlier token of its segment (causal: L^2 / 2 per
segment), capped by the window in sliding-window layers, and nothing in layers that mix tokens linearly
(gated delta-net, Mamba, convolutions: their cost is per token). Forward and backward: 3 x the forward's
FLOPs (both terms alike, so the ratio b / a is what balances).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from packer.core.errors import ConfigError

FULL = ("full_attention", "attention", "global_attention", "global", "full")
SLIDING = ("sliding_attention", "sliding", "local_attention", "local", "chunked_attention")


@dataclass(frozen=True)
class CostModel:
    """Training FLOPs of a pack: per_token x tokens + sum over (per_pair, window) groups of
    per_pair x sum(L x min(L, window)) / 2 over its segments (window None: the whole segment)."""

    per_token: float
    pairs: tuple[tuple[float, int | None], ...]

    def segment_costs(self, seg_lens: np.ndarray) -> np.ndarray:
        """float64 [n]: the cost of each segment alone (a pack's cost is the sum over its segments)."""
        L = np.asarray(seg_lens, np.float64)
        cost = self.per_token * L
        for per_pair, window in self.pairs:
            span = L if window is None else np.minimum(L, float(window))
            cost = cost + per_pair * L * span / 2
        return cost

    def __call__(self, seg_lens: np.ndarray, pack_offsets: np.ndarray) -> np.ndarray:
        """float64 [P]: the cost of each pack, from its segments' lengths and the packs' segment offsets."""
        cost = self.segment_costs(seg_lens)
        if len(pack_offsets) <= 1:
            return np.zeros(0)
        return np.add.reduceat(cost, pack_offsets[:-1]) if len(cost) else np.zeros(len(pack_offsets) - 1)

    def relative(self) -> tuple[tuple[float, int | None], ...]:
        """The attention terms per token's cost: ((b / a, window), ...), what PlanConfig(even="compute") takes
        (the plan evens work, so only the ratio matters)."""
        return tuple((b / self.per_token, w) for b, w in self.pairs)

    def describe(self) -> str:
        return f"compute(a={self.per_token:.6g}, " + ", ".join(
            f"b={b:.6g}/window={w}" for b, w in self.pairs) + ")"


def _get(config, *names, default=None):
    for n in names:
        v = config.get(n) if isinstance(config, dict) else getattr(config, n, None)
        if v is not None:
            return v
    return default


def cost_model(config) -> CostModel:
    """The CostModel of a decoder config (a transformers PretrainedConfig or a dict of its fields: hidden_size,
    num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, intermediate_size, vocab_size;
    MoE: num_experts_per_tok and moe_intermediate_size; hybrids and windows: layer_types, sliding_window)."""
    text = _get(config, "text_config") or config
    H = _get(text, "hidden_size", "d_model", "n_embd")
    n = _get(text, "num_hidden_layers", "n_layer", "num_layers")
    heads = _get(text, "num_attention_heads", "n_head")
    if not (H and n and heads):
        raise ConfigError("cost_model needs hidden_size, num_hidden_layers and num_attention_heads in the config; "
                          "give CostModel(per_token=, pairs=) yourself for this model")
    d = _get(text, "head_dim", default=H // heads)
    kv = _get(text, "num_key_value_heads", default=heads)
    inter = _get(text, "intermediate_size", "n_inner", default=4 * H)
    experts = _get(text, "num_experts_per_tok", "moe_topk")
    moe_inter = _get(text, "moe_intermediate_size", default=inter)
    vocab = _get(text, "vocab_size", default=0)
    mlp = 3 * 2 * H * (moe_inter * experts if experts else inter)  # gated MLP: three matmuls, 2 FLOPs a MAC
    proj = 2 * H * (heads * d + 2 * kv * d) + 2 * heads * d * H
    per_layer_pair = 2 * 2 * heads * d  # QK^T and AV: 2 FLOPs a MAC each, per (query, key) pair
    types = _get(text, "layer_types")
    window = _get(text, "sliding_window", "attention_chunk_size")
    if types is None:
        groups = {None: n}
    else:
        groups: dict[int | None, int] = {}
        for t in types:
            if t in FULL:
                groups[None] = groups.get(None, 0) + 1
            elif t in SLIDING:
                if not window:
                    raise ConfigError(f"layer type '{t}' without sliding_window in the config: give CostModel yourself")
                groups[int(window)] = groups.get(int(window), 0) + 1
            # other layer types (linear attention, Mamba, convolutions) cost per token: in proj/mlp terms
    per_token = 3 * (n * (proj + mlp) + 2 * H * vocab)
    pairs = tuple((3.0 * per_layer_pair * count, w) for w, count in sorted(groups.items(), key=lambda x: str(x[0])))
    return CostModel(float(per_token), pairs)


def read_model_config(path: str | Path) -> dict:
    """A model's config.json (the file, or the folder that holds it) as a dict; a one-line error naming the file
    when it is missing or not a JSON object."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no model config there; pass the model's config.json or the folder that holds it") \
            from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: not a readable JSON model config ({e}); pass the model's config.json") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a model config is a JSON object; this file holds {type(data).__name__}")
    return data
