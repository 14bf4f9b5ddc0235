"""Prove a transformers model trains the same packed as unpacked: logits, loss and gradients (fp32).

`verify(make_model, lengths)` runs the same examples two ways on CPU and measures the differences:

    unpacked  each example alone through attn_implementation="eager" (transformers' own reference)
    packed    all examples in one row through attn_implementation="packer", position_ids restarting
              per example and cu_seq_lens_q marking the boundaries, labels -100 at each first token

The unpacked loss is the token-weighted mean over examples, which is what one packed step computes.
`tiny_config(model_type)` shrinks any causal-LM architecture's default config to a few thousand
parameters with windows and soft-caps small enough to bite on short examples and weights large
enough that they do; the model matrix
(benchmarks/model_matrix.py) and the tests use both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

# Tolerances for fp32 on CPU (DECISIONS: loss 1e-5 relative, weights/gradients 1e-4).
LOGITS_TOL, LOSS_TOL, GRAD_TOL = 1e-4, 1e-5, 1e-4
WINDOW = 8        # sliding window set on tiny configs: shorter than most test examples
SOFTCAP = 2.0     # attention logit soft-cap set on tiny configs: small enough to change the scores
LENGTHS = (23, 9, 31, 2, 17, 12)

# Attribute -> value for tiny configs; applied only where the default config has the attribute.
_TINY = {
    "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "num_experts": 4, "num_local_experts": 4,
    "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1,
    "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "qk_head_dim": 16, "partial_rotary_factor": None, "num_layers": 2, "n_layer": 2, "n_head": 4, "n_embd": 64,
    "d_model": 64, "ffn_dim": 96, "hidden_act": None, "linear_num_key_heads": 2, "linear_num_value_heads": 2,
    "linear_key_head_dim": 16, "linear_value_head_dim": 16, "global_attn_every_n_layers": None,
    "n_group": 1, "topk_group": 1,
    # Weights 15x the usual init: attention scores of order 1, so windows, soft-caps and sinks change the
    # result (at 0.02 the scores are ~1e-3 and dropping a soft-cap of 2 changes nothing measurable).
    "initializer_range": 0.3,
}


def tiny_config(model_type: str, **overrides):
    """A few-thousand-parameter config of `model_type`: every dropout 0, windows WINDOW, soft-caps SOFTCAP."""
    from transformers import AutoConfig, CONFIG_MAPPING

    base = CONFIG_MAPPING[model_type]()
    kw = {}
    derived = {n for n in dir(type(base)) if isinstance(getattr(type(base), n, None), property)}
    for name, value in _TINY.items():
        if value is not None and hasattr(base, name) and name not in derived and \
                not isinstance(getattr(base, name), (dict, list)):
            kw[name] = value
    if "head_dim" in kw and getattr(base, "qk_rope_head_dim", None):  # MLA: rotary on the rope part only
        kw["head_dim"] = kw["qk_rope_head_dim"]
    if "kv_lora_rank" in kw and "num_key_value_heads" in kw:  # MLA: one key per query head
        kw["num_key_value_heads"] = kw["num_attention_heads"]
    if getattr(base, "rotary_dim", None):  # GPT-J / CodeGen: rotary over the first dims of each head
        kw["rotary_dim"] = 8
    for name, value in vars(base).items():
        if ("dropout" in name or "pdrop" in name) and isinstance(value, float):
            kw[name] = 0.0
    if getattr(base, "sliding_window", None) is not None or hasattr(base, "use_sliding_window"):
        kw["sliding_window"] = WINDOW
    if hasattr(base, "use_sliding_window"):
        kw["use_sliding_window"] = True
    if hasattr(base, "max_window_layers"):
        kw["max_window_layers"] = 0
    if getattr(base, "attn_logit_softcapping", None) is not None:
        kw["attn_logit_softcapping"] = SOFTCAP
    for special in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(getattr(base, special, None), int) and "vocab_size" in kw:
            kw[special] = min(getattr(base, special), kw["vocab_size"] - 1)
    kw.update(overrides)
    cfg = AutoConfig.for_model(model_type, **kw)
    # Keep every kind of layer the family has (Gemma 3's 5 local : 1 global would lose its global
    # layer at 2 layers): one layer of each kind, the tiny config's kinds included (forced windows).
    kinds = sorted({*(getattr(base, "layer_types", None) or []), *(getattr(cfg, "layer_types", None) or [])})
    if kinds and "layer_types" not in overrides and sorted(set(cfg.layer_types)) != kinds:
        n = max(2, len(kinds))
        cfg = AutoConfig.for_model(model_type, **{**kw, "num_hidden_layers": n,
                                                   "layer_types": [kinds[i % len(kinds)] for i in range(n)]})
    return cfg


@dataclass
class Verdict:
    """Largest differences packed vs unpacked, relative to the unpacked values' scale."""

    logits: float
    loss: float
    grads: float
    worst_param: str = ""
    attention_calls: int = 0
    config_types: set[str] = field(default_factory=set)

    @property
    def equal(self) -> bool:
        return self.logits <= LOGITS_TOL and self.loss <= LOSS_TOL and self.grads <= GRAD_TOL and \
            self.attention_calls > 0

    def __str__(self) -> str:
        return (f"logits {self.logits:.1e}, loss {self.loss:.1e}, gradients {self.grads:.1e}"
                + (f" ({self.worst_param})" if self.grads > GRAD_TOL else ""))


def examples(lengths: Sequence[int], vocab: int, seed: int = 0) -> list[torch.Tensor]:
    """Random token ids, one int64 tensor per example, avoiding id 0 (often the pad id)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g) for n in lengths]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def verify(make_model: Callable[[str], torch.nn.Module], lengths: Sequence[int] = LENGTHS, *,
           seed: int = 0) -> Verdict:
    """Compare packed (attn "packer") with one-by-one (attn "eager") for `make_model(attn)`.

    make_model must build the same weights for both calls (seed inside it). Raises whatever the packed
    run raises (an UnsupportedModelError is a refusal, with its reason).
    """
    import packer.train.hf.integration as hf

    hf.register(allow_unverified=hf._settings["allow_unverified"])
    packed = make_model(hf.NAME)
    packed.train()
    vocab = packed.get_input_embeddings().num_embeddings
    exs = examples(lengths, vocab, seed)
    ids = torch.cat(exs)[None]
    pos = torch.cat([torch.arange(len(e)) for e in exs])[None]
    cu = torch.tensor([0, *torch.tensor([len(e) for e in exs]).cumsum(0).tolist()], dtype=torch.int32)
    labels = ids.clone()
    labels[0, cu[:-1].long()] = hf.IGNORE
    calls = [0]
    real = hf.varlen_attention

    def counting(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    hf.varlen_attention = counting
    try:
        out = packed(input_ids=ids, position_ids=pos, labels=labels, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                     max_length_q=max(lengths), max_length_k=max(lengths), use_cache=False)
    finally:
        hf.varlen_attention = real
    out.loss.backward()
    g_packed = _grads(packed)
    types = {getattr(m.config, "model_type", "") for m in packed.modules() if getattr(m, "config", None) is not None}

    plain = make_model("eager")
    plain.train()
    total, n_targets, worst_logits, off = 0.0, sum(len(e) - 1 for e in exs), 0.0, 0
    scale = 0.0
    for e in exs:
        o = plain(input_ids=e[None], position_ids=torch.arange(len(e))[None], labels=e[None], use_cache=False)
        diff = (o.logits[0].float() - out.logits[0, off:off + len(e)].float()).abs().max().item()
        scale = max(scale, o.logits.float().abs().max().item())
        worst_logits = max(worst_logits, diff)
        off += len(e)
        if len(e) > 1:
            total = total + o.loss * (len(e) - 1)
    loss = total / n_targets
    loss.backward()
    g_plain = _grads(plain)
    # Each parameter's difference relative to its largest gradient, floored at 1% of the model's largest:
    # some gradients are zero in exact arithmetic (a key bias under softmax) and only fp32 noise in both.
    floor = 1e-2 * max((g.abs().max().item() for g in g_plain.values()), default=1.0)
    worst, worst_name = 0.0, ""
    for name in g_plain.keys() | g_packed.keys():
        a, b = g_plain.get(name), g_packed.get(name)
        if a is None or b is None:
            worst, worst_name = float("inf"), f"{name} has a gradient one way only"
            continue
        rel = ((a - b).abs().max() / max(a.abs().max().item(), floor, 1e-12)).item()
        if rel > worst:
            worst, worst_name = rel, name
    return Verdict(logits=worst_logits / max(scale, 1e-12), loss=abs(loss.item() - out.loss.item()) / max(abs(loss.item()), 1e-12),
                   grads=worst, worst_param=worst_name, attention_calls=calls[0], config_types=types)
