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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
    "n_group": 1, "topk_group": 1, "vocab_size_per_layer_input": 128, "hidden_size_per_layer_input": 16,
    "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 96, "decoder_ffn_dim": 96,
    "encoder_layers": 2, "decoder_layers": 2, "hidden_size_global": 64,
    # Weights 15x the usual init: attention scores of order 1, so windows, soft-caps and sinks change the
    # result (at 0.02 the scores are ~1e-3 and dropping a soft-cap of 2 changes nothing measurable).
    "initializer_range": 0.3,
}


# Families the generic shrinker cannot make consistent, and small chunks so that packed examples cross
# the chunk boundaries of chunked scans (Mamba-2's SSD, Llama 4's chunked attention).
_MAMBA2 = {"mamba_n_heads": 8, "mamba_d_head": 16, "mamba_n_groups": 1, "mamba_d_state": 16, "mamba_chunk_size": 8,
           "mamba_expand": 2}
FAMILY_OVERRIDES: dict[str, dict] = {
    "mamba2": {"num_heads": 8, "head_dim": 16, "n_groups": 1, "state_size": 16, "chunk_size": 8, "expand": 2},
    "bamba": dict(_MAMBA2, attn_layer_indices=[1]),
    "granitemoehybrid": dict(_MAMBA2, layer_types=["mamba", "attention"]),
    "falcon_h1": dict(_MAMBA2, mamba_d_ssm=128),
    "nemotron_h": {"mamba_num_heads": 8, "mamba_head_dim": 16, "n_groups": 1, "ssm_state_size": 16, "chunk_size": 8,
                   "expand": 2, "hybrid_override_pattern": "M*-E", "head_dim": 16},
    "zamba2": {"mamba_headdim": 16, "n_mamba_heads": 8, "mamba_ngroups": 1, "mamba_d_state": 16, "chunk_size": 8,
               "mamba_expand": 2, "attention_head_dim": 16, "layers_block_type": ["linear_attention", "hybrid"]},
    "zamba": {"attention_head_dim": 16, "mamba_dt_rank": 8, "n_mamba_heads": 2, "num_hidden_layers": 3,
              "layers_block_type": ["linear_attention", "hybrid", "hybrid"]},  # two hybrids share one block
    "recurrent_gemma": {"block_types": ["recurrent", "attention"], "lru_width": 64, "attention_window_size": WINDOW},
    "dbrx": {"attn_config": {"rope_theta": 10000.0, "kv_n_heads": 2, "clip_qkv": 8.0}, "ffn_config": {"ffn_hidden_size": 96,
                                                                                    "moe_num_experts": 4}},
    "cohere_compass_text": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
    "kolibri1_1": {"layer_types": ["sliding_attention", "indexed_attention"], "kv_source_layers": [0, 1],
                   "index_layers": [1], "mlp_only_layers": [0]},
    "blt": {"encoder_hash_byte_group_vocab": 512},
    "reformer": {"is_decoder": True, "axial_pos_embds_dim": [32, 32], "axial_pos_shape": [16, 16]},
    "lfm2": {"layer_types": ["conv", "full_attention"]},  # the default config has no convolution layers
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1,
              "mamba_dt_rank": 8},
    "llama4_text": {"attention_chunk_size": 8, "no_rope_layers": [1, 0], "floor_scale": 8192},
    "gemma3n_text": {"num_hidden_layers": 4, "num_kv_shared_layers": 2, "intermediate_size": [96] * 4,
                     "layer_types": ["sliding_attention", "full_attention"] * 2,
                     "activation_sparsity_pattern": [0.95, 0.0, 0.0, 0.0], "laurel_rank": 8},
    # mRoPE text decoders whose sections default to a full-size head: the tiny head's (sum = head_dim / 2)
    **{k: {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}}
       for k in ("qwen2_vl_text", "qwen2_5_vl_text", "glm4v_text", "glm4v_moe_text")},
    # Gemma 4: full-attention layers with their own head size (per_layer_config, derived from this)
    **{k: {"global_head_dim": 32} for k in ("gemma4_text", "gemma4_unified_text")},
}


_RAISE = {"initializer_range"}  # the one _TINY value that may grow; every other is only ever made smaller

# Sub-configs of composite models (a vision tower, an audio encoder, a VQ model beside the text decoder):
# shrunk with _TINY and these, so the model builds small; text-only rows never run them.
_TINY_TOWER = {"depth": 1, "num_heads": 4, "embed_dim": 64, "out_hidden_size": 64, "vision_output_dim": 64,
               "projector_input_dim": 64, "projector_output_dim": 64, "mlp_dim": 96, "num_blocks": 1,
               "encoder_layers": 1, "decoder_layers": 1, "num_global_layers": 1, "adapter_in_dim": 64,
               "adapter_out_dim": 64, "adapter_input_size": 64, "base_channels": 32,
               "codebook_size": 64, "embed_dim_vq": 32}


_MISSING = object()


def _attr(config, name: str):
    """config.name, or _MISSING; per-layer attributes (Gemma 4's heterogeneous configs refuse the global
    read) come from the config's own fields."""
    try:
        return getattr(config, name)
    except AttributeError:
        return _MISSING
    except Exception:  # noqa: BLE001  (AmbiguousGlobalPerLayerAttributeError and kin)
        return vars(config).get(name, _MISSING)


def _shrunk(base, model_type: str, tower: bool) -> dict:
    """The keyword arguments that make `base` (a config instance) tiny, its sub-configs included."""
    from transformers import PretrainedConfig

    def get(name: str, default=None):
        value = _attr(base, name)
        return default if value is _MISSING else value

    kw = {}
    derived = {n for n in dir(type(base)) if isinstance(getattr(type(base), n, None), property)}
    table = {**_TINY, **_TINY_TOWER} if tower else _TINY
    for name, value in table.items():
        current = _attr(base, name)
        if value is not None and current is not _MISSING and name not in derived and \
                not isinstance(current, (dict, list, PretrainedConfig)):
            if name not in _RAISE and isinstance(current, (int, float)) and not isinstance(current, bool) \
                    and current < value:
                continue  # already smaller (no per-layer inputs, one expert a token): the family may need it
            kw[name] = value
    if "head_dim" in kw and get("qk_rope_head_dim"):  # MLA: rotary on the rope part only
        kw["head_dim"] = kw["qk_rope_head_dim"]
    if "kv_lora_rank" in kw and "num_key_value_heads" in kw:  # MLA: one key per query head
        kw["num_key_value_heads"] = kw["num_attention_heads"]
    if get("rotary_dim"):  # GPT-J / CodeGen: rotary over the first dims of each head
        kw["rotary_dim"] = 8
    for name, value in vars(base).items():
        if ("dropout" in name or "pdrop" in name or "jitter" in name) and isinstance(value, float):
            kw[name] = 0.0
    if get("sliding_window") is not None or get("use_sliding_window", _MISSING) is not _MISSING:
        kw["sliding_window"] = WINDOW
    if get("use_sliding_window", _MISSING) is not _MISSING:
        kw["use_sliding_window"] = True
    if get("max_window_layers", _MISSING) is not _MISSING:
        kw["max_window_layers"] = 0
    if get("attn_logit_softcapping") is not None:
        kw["attn_logit_softcapping"] = SOFTCAP
    _fewer_layers(base, kw, derived)
    rope = get("rope_parameters")
    if isinstance(rope, dict) and rope.get("mrope_section"):  # mRoPE: the sections fill half the tiny head
        head = kw.get("head_dim") or kw.get("hidden_size", 64) // kw.get("num_attention_heads", 4)
        sections = rope["mrope_section"]
        scaled = [max(1, round(x * (head // 2) / sum(sections))) for x in sections]
        scaled[0] += head // 2 - sum(scaled)
        kw["rope_parameters"] = {**rope, "mrope_section": scaled}
    vocab = kw.get("vocab_size")
    for special in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(get(special), int) and vocab:
            kw[special] = min(get(special), vocab - 1)
    for name, sub in vars(base).items():  # composite models: every sub-config shrunk too
        if isinstance(sub, PretrainedConfig) and name not in derived:
            sub_type = getattr(sub, "model_type", "") or ""
            inner = _shrunk(sub, sub_type, tower=tower or name not in ("text_config", "decoder_config"))
            # per-layer overrides are indexed by the full model's layers: the sub-config derives its own
            whole = {k: v for k, v in sub.to_dict().items() if k != "per_layer_config"}
            kw[name] = {**whole, **inner, **FAMILY_OVERRIDES.get(sub_type, {})}
    for name, value in FAMILY_OVERRIDES.get(model_type, {}).items():  # a sub-config's overrides merge into it
        kw[name] = {**kw[name], **value} if isinstance(value, dict) and isinstance(kw.get(name), dict) else value
    return kw


def _fewer_layers(base, kw: dict, derived: set) -> None:
    """Keep one layer of each kind (the first of each in `layer_types`, at least two layers), and every
    per-layer list (layer types, per-layer sizes, NoPE flags) at those layers, so they stay consistent."""
    count = next((n for n in ("num_hidden_layers", "num_layers", "n_layer") if n in kw), None)
    total = _attr(base, count) if count else None
    if not isinstance(total, int) or total <= 2:
        return
    per_layer = {n: v for n, v in vars(base).items()
                 if n not in derived and isinstance(v, list) and len(v) == total and n not in kw}
    kinds = per_layer.get("layer_types")
    keep = sorted({kinds.index(k) for k in kinds}) if kinds else []
    keep = sorted({*keep, *[i for i in range(total) if i not in keep][:max(0, 2 - len(keep))]})
    kw[count] = len(keep)
    for name, values in per_layer.items():
        kw[name] = [values[i] for i in keep]


def tiny_config(model_type: str, **overrides):
    """A few-thousand-parameter config of `model_type`: every dropout and router jitter 0 (training noise
    is random both ways, not a packing question), windows WINDOW, soft-caps SOFTCAP.

    Composite models (a text decoder beside vision or audio towers) get every sub-config shrunk; families
    the generic rules cannot make consistent have FAMILY_OVERRIDES."""
    from transformers import AutoConfig, CONFIG_MAPPING

    base = CONFIG_MAPPING[model_type]()
    kw = _shrunk(base, model_type, tower=False)
    kw.update(overrides)
    for special in ("pad_token_id", "bos_token_id", "eos_token_id"):  # inside a vocabulary the caller shrank
        if isinstance(kw.get(special), int) and isinstance(kw.get("vocab_size"), int):
            kw[special] = min(kw[special], kw["vocab_size"] - 1)
    cfg = AutoConfig.for_model(model_type, **kw)
    # Keep every kind of layer the family has (Gemma 3's 5 local : 1 global would lose its global
    # layer at 2 layers): one layer of each kind, the tiny config's kinds included (forced windows).
    # Families whose layer_types is derived from other settings (a read-only property) set those instead.
    settable = not isinstance(getattr(type(cfg), "layer_types", None), property) and \
        "layer_types" not in kw and "layers_block_type" not in kw and "hybrid_override_pattern" not in kw
    kinds = sorted({*(getattr(base, "layer_types", None) or []), *(getattr(cfg, "layer_types", None) or [])})
    if settable and kinds and sorted(set(cfg.layer_types)) != kinds:
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
    mixer_calls: int = 0
    """Calls of token mixers outside attention that Packer keeps to each example (packer.train.hf.mixers)."""

    floor: tuple[float, float] | None = None
    """(logits, gradients): how far transformers' own reference moves by batch shape alone, measured when
    the strict tolerances are missed narrowly (see _reference_floor)."""

    @property
    def equal(self) -> bool:
        if self.attention_calls + self.mixer_calls == 0 or self.loss > LOSS_TOL:
            return False
        if self.logits <= LOGITS_TOL and self.grads <= GRAD_TOL:
            return True
        # within twice the reference's own rounding across batch shapes (never looser than 10x the tolerances)
        return self.floor is not None and \
            self.logits <= min(10 * LOGITS_TOL, max(LOGITS_TOL, 2 * self.floor[0])) and \
            self.grads <= min(10 * GRAD_TOL, max(GRAD_TOL, 2 * self.floor[1]))

    def __str__(self) -> str:
        text = (f"logits {self.logits:.1e}, loss {self.loss:.1e}, gradients {self.grads:.1e}"
                + (f" ({self.worst_param})" if self.grads > GRAD_TOL else ""))
        if self.floor is not None:
            text += f"; the reference itself moves by logits {self.floor[0]:.1e}, gradients {self.floor[1]:.1e}"
        return text


def examples(lengths: Sequence[int], vocab: int, seed: int = 0) -> list[torch.Tensor]:
    """Random token ids, one int64 tensor per example, avoiding id 0 (often the pad id)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g) for n in lengths]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _packed(make_model: Callable[[str], torch.nn.Module]) -> torch.nn.Module:
    """The model built with attn "packer", in training mode, checked and with its token mixers installed, as
    use_packer_attention leaves it."""
    import packer.train.hf.integration as hf

    from packer.train.hf import mixers as M

    hf.register(allow_unverified=hf._settings["allow_unverified"])
    packed = make_model(hf.NAME)
    packed.train()
    hf.check_model(packed)
    M.install(packed)
    return packed


@contextmanager
def _counting_attention() -> Iterator[list[int]]:
    """Counts (in the list yielded) the calls of Packer's varlen attention while the block runs: a check that
    never reached it proves nothing."""
    import packer.train.hf.integration as hf

    calls = [0]
    real = hf.varlen_attention

    def counting(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    hf.varlen_attention = counting
    try:
        yield calls
    finally:
        hf.varlen_attention = real


def _config_types(model: torch.nn.Module) -> set[str]:
    """The model_type of every config the model's modules hold (a composite's sub-configs included)."""
    return {getattr(m.config, "model_type", "") for m in model.modules() if getattr(m, "config", None) is not None}


def verify(make_model: Callable[[str], torch.nn.Module], lengths: Sequence[int] = LENGTHS, *,
           seed: int = 0) -> Verdict:
    """Compare packed (attn "packer") with one-by-one (attn "eager") for `make_model(attn)`.

    make_model must build the same weights for both calls (seed inside it). Raises whatever the packed
    run raises (an UnsupportedModelError is a refusal, with its reason).
    """
    import packer.train.hf.integration as hf

    from packer.train.hf import mixers as M

    packed = _packed(make_model)
    vocab = packed.get_input_embeddings().num_embeddings
    head = packed.get_output_embeddings()  # ids the head predicts (Mllama's embeddings add image tokens)
    if head is not None and getattr(head, "weight", None) is not None:
        vocab = min(vocab, head.weight.shape[0])
    exs = examples(lengths, vocab, seed)
    ids = torch.cat(exs)[None]
    pos = torch.cat([torch.arange(len(e)) for e in exs])[None]
    cu = torch.tensor([0, *torch.tensor([len(e) for e in exs]).cumsum(0).tolist()], dtype=torch.int32)
    labels = ids.clone()
    labels[0, cu[:-1].long()] = hf.IGNORE
    mixer_calls = [0]
    for m in M.mixers(packed):  # a model of mixers only (Mamba) reaches no attention: its mixers count
        m.register_forward_hook(lambda *a: mixer_calls.__setitem__(0, mixer_calls[0] + 1))
    with _counting_attention() as calls:
        out = packed(input_ids=ids, position_ids=pos, labels=labels, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                     max_length_q=max(lengths), max_length_k=max(lengths), use_cache=False)
    out.loss.backward()
    g_packed = _grads(packed)
    types = _config_types(packed)

    plain = make_model("eager")
    plain.train()
    total, n_targets, worst_logits, off = 0.0, sum(len(e) - 1 for e in exs), 0.0, 0
    scale = 0.0
    alone_logits = []
    for e in exs:
        o = plain(input_ids=e[None], position_ids=torch.arange(len(e))[None], labels=e[None], use_cache=False)
        alone_logits.append(o.logits[0].detach().float())
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
    worst, worst_name = _grad_difference(g_plain, g_packed)
    verdict = Verdict(logits=worst_logits / max(scale, 1e-12),
                      loss=abs(loss.item() - out.loss.item()) / max(abs(loss.item()), 1e-12),
                      grads=worst, worst_param=worst_name, attention_calls=calls[0], config_types=types,
                      mixer_calls=mixer_calls[0])
    if not verdict.equal and verdict.loss <= LOSS_TOL and max(verdict.logits / LOGITS_TOL, verdict.grads / GRAD_TOL) < 10:
        verdict.floor = _reference_floor(make_model, exs, alone_logits, g_plain, scale)
    return verdict


def _grad_difference(reference: dict, other: dict) -> tuple[float, str]:
    """The largest difference of a parameter's gradient, relative to its largest value, floored at 1% of
    the model's largest: some gradients are zero in exact arithmetic (a key bias under softmax) and only
    fp32 noise in both."""
    floor = 1e-2 * max((g.abs().max().item() for g in reference.values()), default=1.0)
    worst, worst_name = 0.0, ""
    for name in reference.keys() | other.keys():
        a, b = reference.get(name), other.get(name)
        if a is None or b is None:
            return float("inf"), f"{name} has a gradient one way only"
        rel = ((a - b).abs().max() / max(a.abs().max().item(), floor, 1e-12)).item()
        if rel > worst:
            worst, worst_name = rel, name
    return worst, worst_name


def _reference_floor(make_model, exs: list[torch.Tensor], alone_logits: list[torch.Tensor], g_alone: dict,
                     scale: float) -> tuple[float, float] | None:
    """How far transformers' own reference moves when only the grouping of the same examples changes: the
    examples alone vs all of them in one right-padded batch (eager attention, attention mask). Some
    families round differently by batch shape (an associative scan's tree, an MoE's grouped matmuls);
    their packed result is judged against this floor. (logits, gradients) relative, or None when the
    family does not run padded batches."""
    try:
        plain = make_model("eager")
        plain.train()
        width = max(len(e) for e in exs)
        ids = torch.zeros(len(exs), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for r, e in enumerate(exs):
            ids[r, :len(e)], mask[r, :len(e)], labels[r, :len(e)] = e, 1, e
        o = plain(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
        o.loss.backward()
    except Exception:  # noqa: BLE001  (a family without padded batches keeps the strict tolerances)
        return None
    moved = max((o.logits[r, :len(e)].float() - alone_logits[r]).abs().max().item() for r, e in enumerate(exs))
    return moved / max(scale, 1e-12), _grad_difference(g_alone, _grads(plain))[0]


# Image-text families whose images Packer packs (packer.build.images reads their processors): the model
# matrix verifies them with images in the packed row too (verify_images).
VISION_FAMILIES = ("llava", "qwen2_5_vl", "qwen2_vl", "qwen3_vl")


def tiny_vision_config(model_type: str):
    """tiny_config for an image-text family, with its special vision token ids moved inside the tiny vocabulary
    (the top ids, in name order) and LLaVA's images shrunk to 4 x 4 patches."""
    cfg = tiny_config(model_type)
    vocab = cfg.get_text_config().vocab_size
    names = sorted(k for k, v in cfg.to_dict().items() if (k.endswith("_token_id") or k.endswith("_token_index"))
                   and k not in ("pad_token_id", "bos_token_id", "eos_token_id") and isinstance(v, int) and v >= vocab)
    for i, name in enumerate(names):
        setattr(cfg, name, vocab - 1 - i)
    if getattr(cfg.vision_config, "image_size", None) and not hasattr(cfg.vision_config, "spatial_merge_size"):
        cfg.vision_config.image_size = 4 * cfg.vision_config.patch_size
    return cfg


def _image_inputs(config, image_token: int, vocab: int, seed: int):
    """Three examples for verify_images: two images, one image, none (ids with each image's placeholder run,
    its pixel values, and for mRoPE families its grid)."""
    import numpy as np

    g = torch.Generator().manual_seed(seed)
    vision = config.vision_config
    text = lambda n: [int(x) for x in torch.randint(1, vocab, (n,), generator=g) if int(x) != image_token] or [1]
    if hasattr(vision, "spatial_merge_size"):  # Qwen2-VL family: patches of C x T x P x P, merged m x m
        m, p = vision.spatial_merge_size, vision.patch_size
        t = getattr(vision, "temporal_patch_size", 2)
        c = getattr(vision, "in_channels", getattr(vision, "in_chans", 3))
        shapes = ([(1, 2 * m, 2 * m), (1, m, 3 * m)], [(1, 2 * m, m)], [])

        def image(grid):
            n = int(np.prod(grid))
            return torch.randn(n, c * t * p * p, generator=g), n // (m * m)
    else:  # LLaVA: one fixed-size image each, (size / patch)^2 tokens (the CLS token dropped by default)
        size, p = vision.image_size, vision.patch_size
        drop = 1 if getattr(config, "vision_feature_select_strategy", "default") == "default" else 0
        shapes = ([None, None], [None], [])

        def image(_):
            return torch.randn(1, 3, size, size, generator=g), (size // p) ** 2 + 1 - drop
    out = []
    for grids in shapes:
        ids, pixels = text(5), []
        for grid in grids:
            px, n = image(grid)
            ids += [image_token] * n + text(4)
            pixels.append(px)
        out.append((torch.tensor(ids), pixels, [list(gr) for gr in grids if gr is not None]))
    return out


def verify_images(make_model: Callable[[str], torch.nn.Module], *, seed: int = 0) -> Verdict:
    """verify() for an image-text model (VISION_FAMILIES) with images in the row: one packed row of three
    examples (two images, one, none) through attn "packer" with Packer's position ids (for mRoPE families the
    text row restarting per example, then each example's own mRoPE rows: packer.core.vision), against each
    example alone through attn "eager" with the model's own positions. Compares logits, the token-summed loss
    (image placeholders are not targets) and the gradients of the language model and the vision tower."""
    import inspect

    import numpy as np

    from packer.core.vision import packed_positions

    packed = _packed(make_model)
    config = packed.config
    image_token = getattr(config, "image_token_id", None)
    image_token = getattr(config, "image_token_index", None) if image_token is None else image_token
    vocab = packed.get_input_embeddings().num_embeddings
    exs = _image_inputs(config, image_token, vocab, seed)
    mrope = bool(exs[0][2])
    takes_types = "mm_token_type_ids" in inspect.signature(packed.forward).parameters

    def inputs(ids: torch.Tensor, pixels: list, grids: list) -> dict:
        kw = {"input_ids": ids[None], "use_cache": False}
        if takes_types:
            kw["mm_token_type_ids"] = (ids[None] == image_token).long()
        if pixels:
            kw["pixel_values"] = torch.cat(pixels)
            if mrope:
                kw["image_grid_thw"] = torch.tensor(grids)
        return kw

    def losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        labels = ids.clone()
        labels[labels == image_token] = -100
        return torch.nn.functional.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=-100, reduction="sum")

    ids = torch.cat([e[0] for e in exs])
    cu = np.concatenate([[0], np.cumsum([len(e[0]) for e in exs])])
    kw = inputs(ids, [p for e in exs for p in e[1]], [gr for e in exs for gr in e[2]])
    if mrope:
        grids = np.array([gr for e in exs for gr in e[2]], np.int64).reshape(-1, 3)
        pos = packed_positions(ids.numpy(), cu, image_token, grids, config.vision_config.spatial_merge_size)
        kw["position_ids"] = torch.from_numpy(pos)[:, None, :]
    else:
        kw["position_ids"] = torch.cat([torch.arange(len(e[0])) for e in exs])[None]
    longest = int(np.diff(cu).max())  # the boundaries as training passes them (batch_to_kwargs)
    kw.update(cu_seq_lens_q=torch.tensor(cu, dtype=torch.int32), cu_seq_lens_k=torch.tensor(cu, dtype=torch.int32),
              max_length_q=longest, max_length_k=longest)
    with _counting_attention() as calls:
        out = packed(**kw)
    packed_loss = sum(losses(out.logits[0, cu[k]:cu[k + 1]], e[0]) for k, e in enumerate(exs))
    packed_loss.backward()
    types = _config_types(packed)

    plain = make_model("eager")
    plain.train()
    total, worst, scale = 0.0, 0.0, 0.0
    for k, e in enumerate(exs):
        logits = plain(**inputs(*e)).logits[0]
        worst = max(worst, (logits.float() - out.logits[0, cu[k]:cu[k + 1]].float()).abs().max().item())
        scale = max(scale, logits.float().abs().max().item())
        total = total + losses(logits, e[0])
    total.backward()
    g_packed = _grads(packed)
    grads, name = _grad_difference(_grads(plain), g_packed)
    if not any(("visual" in n or "vision" in n) and bool(g.abs().sum() > 0) for n, g in g_packed.items()):
        grads, name = float("inf"), "no gradient reached the vision tower (the images never entered the model)"
    return Verdict(logits=worst / max(scale, 1e-12),
                   loss=abs(total.item() - packed_loss.item()) / max(abs(total.item()), 1e-12),
                   grads=grads, worst_param=name, attention_calls=calls[0], config_types=types)
