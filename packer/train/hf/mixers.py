"""Token mixers outside attention, kept inside each packed example: state-space, linear-attention and
convolution layers of hybrid models, and chunked attention.

A packed row holds several examples; attention keeps them apart through cu_seqlens, but a recurrent
state (gated delta-net, Mamba), a causal convolution's taps or a chunk count would carry one example
into the next. Every mixer class Packer knows (MIXERS) is made exact:

    unpacked   the packed row is scattered into one row per example, [N, longest] (examples start at 0,
               zero padding after them), the layer's own forward runs on them, and its output is gathered
               back. The layer computes each example from a fresh state by construction, exactly as alone
               (one vectorized scatter and gather: no loop over examples). Used on every device for
               every mixer without a varlen kernel, and on CPU for all of them.
    native     on CUDA with the layer's varlen kernels installed (flash-linear-attention for gated
               delta-nets, mamba-ssm and causal-conv1d for Mamba-2, causal-conv1d for short convolutions),
               the rows go as one row [1, B * T] (fla's varlen kernels take one) with the boundaries in the
               arguments transformers hands those kernels: `cu_seq_lens_q` (-> fla's cu_seqlens, int32 [N + 1])
               and `seq_idx` (-> causal-conv1d's and mamba-ssm's, int32 [1, B * T], the example of each token).
               transformers' own guard raises if either reaches a torch fallback, so a kernel that is missing
               at run time is an error, never a leak.

Boundaries come from the model's call: `cu_seq_lens_q` (what PackedCollator and batch_to_kwargs pass) or
else position_ids restarting at 0. A forward pre-hook on the model (installed by `install`) computes them
once per batch and hands them to each mixer; it also turns the KV cache off for packed batches (a cache
would keep per-row states that mean nothing for a packed row, and it hides packing from transformers'
mask code), and refuses use_cache=True asked explicitly.

Chunked attention (Llama 4) is exact in packer_attention: a chunked layer's examples are split into
chunks of attention_chunk_size tokens counted from each example's start. Llama 4's attention temperature
tuning scales its NoPE layers' queries by the row position, not the example's: exact only for rows of at
most floor_scale - 1 tokens, and refused above.
"""

from __future__ import annotations

import inspect
import types
from dataclasses import dataclass

import torch

from packer.core.errors import ConfigError

# Mixer class -> its mechanism's family (what kernels its native path needs; None: always unpacked).
MIXERS: dict[str, str | None] = {
    # gated delta-net (Qwen3.5, Qwen3-Next, OLMo-Hybrid): fla's chunk_gated_delta_rule(cu_seqlens) + causal-conv1d
    "Qwen3NextGatedDeltaNet": "gated_delta_net", "Qwen3_5GatedDeltaNet": "gated_delta_net",
    "Qwen3_5MoeGatedDeltaNet": "gated_delta_net", "OlmoHybridGatedDeltaNet": "gated_delta_net",
    "LaraMiniGatedDeltaNet": "gated_delta_net", "Qwen4ExpTextGatedDeltaNet": "gated_delta_net",
    # Kimi delta attention (per-channel gates): transformers passes no boundaries to fla's kda kernels
    "KimiLinearDeltaAttention": None, "BailingHybridDeltaAttention": None, "Glm5NextTextLinearAttention": None,
    # lightning attention (MiniMax): no varlen kernel
    "MiniMaxLightningAttention": None,
    # Mamba-2 (Falcon-H1, Bamba, Nemotron-H, Granite-4 hybrids, Zamba2): mamba-ssm's kernels take seq_idx
    "Mamba2Mixer": "mamba2", "BambaMixer": "mamba2", "FalconH1Mixer": "mamba2", "NemotronHMamba2Mixer": "mamba2",
    "GraniteMoeHybridMambaLayer": "mamba2", "Zamba2MambaMixer": "mamba2",
    # Mamba-1 (Mamba, Falcon-Mamba, Jamba, Zamba): its selective scan has no seq_idx
    "MambaMixer": None, "FalconMambaMixer": None, "JambaMambaMixer": None, "ZambaMambaMixer": None,
    # short causal convolutions (LFM2): causal-conv1d takes seq_idx
    "Lfm2ShortConv": "conv", "Lfm2MoeShortConv": "conv", "Lfm3ShortConv": "conv",
    # short convolutions beside attention (Inkling's hybrid layers, ZAYA's convolved query/key projections)
    "InklingShortConvolution": None, "ZayaCCAProjection": None, "Inkling2ShortConvolution": None,
    "Inkling2DynamicShortConvolution": None, "Inkling2LoopShortConvolution": None,
    "Inkling2LoopDynamicShortConvolution": None,
    # RG-LRU with its convolution (RecurrentGemma), RWKV's time and channel mixing, xLSTM's mLSTM layers
    "RecurrentGemmaRecurrentBlock": None, "RwkvSelfAttention": None, "RwkvFeedForward": None, "xLSTMLayer": None,
}
# Mixer class -> the mechanism it implements (docs/MODELS.md counts families by it).
MECHANISMS: dict[str, str] = {
    **{c: "gated delta-net" for c in MIXERS if c.endswith("GatedDeltaNet")},
    "KimiLinearDeltaAttention": "Kimi delta attention", "BailingHybridDeltaAttention": "delta attention",
    "Glm5NextTextLinearAttention": "linear attention", "MiniMaxLightningAttention": "lightning attention",
    **{c: "Mamba-2" for c, k in MIXERS.items() if k == "mamba2"},
    **{c: "Mamba-1" for c in ("MambaMixer", "FalconMambaMixer", "JambaMambaMixer", "ZambaMambaMixer")},
    **{c: "short convolution" for c in MIXERS if "ShortConv" in c}, "ZayaCCAProjection": "short convolution",
    **{c: "dynamic short convolution" for c in MIXERS if "DynamicShortConv" in c},
    "RecurrentGemmaRecurrentBlock": "RG-LRU", "RwkvSelfAttention": "RWKV", "RwkvFeedForward": "RWKV",
    "xLSTMLayer": "mLSTM",
}
NATIVE_NEEDS = {"gated_delta_net": ("fla", "causal_conv1d"), "mamba2": ("mamba_ssm", "causal_conv1d"),
                "conv": ("causal_conv1d",)}


@dataclass
class Segments:
    """Where each token of a [B, T] batch is: its example (0..N-1, over rows concatenated) and its position
    in the example. starts/lengths: int64 [N]."""

    example: torch.Tensor
    position: torch.Tensor
    lengths: torch.Tensor
    rows: int
    width: int

    @property
    def count(self) -> int:
        return len(self.lengths)

    def seq_idx(self) -> torch.Tensor:
        """int32 [1, B * T]: mamba-ssm's and causal-conv1d's seq_idx for the rows concatenated (the example
        of each token)."""
        return self.example.to(torch.int32)[None]

    def cu_seqlens(self) -> torch.Tensor:
        """int32 [N + 1]: flash-linear-attention's cu_seqlens for the rows concatenated."""
        return torch.cat([self.lengths.new_zeros(1), self.lengths.cumsum(0)]).to(torch.int32)


def segments(batch: int, width: int, cu_seqlens: torch.Tensor | None = None,
             position_ids: torch.Tensor | None = None) -> Segments | None:
    """The examples of a packed [batch, width] call, from cu_seqlens (over rows concatenated) or else
    position_ids restarting at 0 (2-D, or mRoPE's 3- or 4-row form: its first row); None when neither is
    given (each row is one example)."""
    total = batch * width
    if cu_seqlens is not None:
        cu = cu_seqlens.to(torch.long).flatten()
        if len(cu) < 2 or int(cu[0]) != 0 or int(cu[-1]) != total or bool((cu[1:] <= cu[:-1]).any()):
            raise ConfigError(f"cu_seq_lens_q {cu.tolist()[:8]}... does not split the batch's {total} tokens into "
                              "non-empty examples")
        lengths = cu[1:] - cu[:-1]
        row_starts = torch.arange(0, total, width, device=cu.device)
        if not bool(torch.isin(row_starts, cu).all()):
            raise ConfigError(f"cu_seq_lens_q {cu.tolist()[:8]}... has an example running from one row of "
                              f"{width} tokens into the next; every row must start an example")
    elif position_ids is not None:
        pos = position_ids[0] if position_ids.dim() == 3 else position_ids
        pos = pos.reshape(-1).to(torch.long)
        if pos.numel() != total:
            return None
        start = pos == 0
        start[torch.arange(0, total, width, device=pos.device)] = True
        first = torch.nonzero(start).flatten()
        lengths = torch.diff(first, append=torch.tensor([total], device=pos.device))
    else:
        return None
    example = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    position = torch.arange(total, device=lengths.device) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    return Segments(example, position, lengths, batch, width)


def _native(kind: str | None, hidden: torch.Tensor) -> bool:
    """Whether this mixer's varlen kernels run here (CUDA, installed): then the row goes as it is."""
    if kind is None or not hidden.is_cuda:
        return False
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in NATIVE_NEEDS[kind])


# Arguments that carry a recurrent state or cache between calls: a packed batch must not have one.
_STATE_ARGS = ("cache", "cache_params", "past_key_values", "past_key_value", "state")
# Arguments about the packed row that the unpacked call must not see (it has one example a row, examples
# start at 0 and the zero padding after them is never read by a causal layer).
_ROW_ARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx", "cache_position",
             "attention_mask", "conv_mask")
_SIGNATURES: dict[type, inspect.Signature] = {}


def _signature(module: torch.nn.Module) -> inspect.Signature:
    kind = type(module)
    if kind not in _SIGNATURES:
        _SIGNATURES[kind] = inspect.signature(module._packer_original_forward)
    return _SIGNATURES[kind]


def _mixer_forward(self, hidden_states: torch.Tensor, *args, **kwargs):
    """The wrapped forward of a token mixer (see the module docstring)."""
    seg = getattr(self, "_packer_segments", None)
    original = self._packer_original_forward
    if seg is None or seg.count == seg.rows:  # one example a row: nothing crosses a boundary
        return original(hidden_states, *args, **kwargs)
    name = type(self).__name__
    b, t = hidden_states.shape[:2]
    if (b, t) != (seg.rows, seg.width):
        raise ConfigError(f"{name} got a [{b}, {t}] input inside a packed [{seg.rows}, {seg.width}] "
                          "call; Packer cannot tell its examples apart")
    params = _signature(self).parameters.values()
    given = dict(_signature(self).bind(hidden_states, *args, **kwargs).arguments)
    var_kw = next((p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    extra = given.pop(var_kw, {}) if var_kw else {}
    for arg in _STATE_ARGS:
        if given.get(arg) is not None or extra.get(arg) is not None:
            raise ConfigError(f"{name} got a {arg} in a packed batch: a recurrent state or cache would carry one "
                              "example into the next; pass use_cache=False")
    for arg in _ROW_ARGS:  # what described the packed row; each path below says what its layout needs
        if arg in given:
            given[arg] = None
        extra.pop(arg, None)
    extra.pop("position_ids", None)
    device = hidden_states.device
    if var_kw and _native(self._packer_kind, hidden_states):
        # the rows as one row (fla's varlen kernels take one row), the boundaries where the kernels read them
        cu = seg.cu_seqlens()
        extra.update(seq_idx=seg.seq_idx(), cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                     max_length_q=int(seg.lengths.max()), max_length_k=int(seg.lengths.max()))
        where = (torch.zeros_like(seg.example), torch.arange(b * t, device=device))
        grid = (1, b * t)
    else:
        # one example a row, from position 0, zero padding after it (never read by a causal layer)
        width = int(seg.lengths.max())
        where, grid = (seg.example, seg.position), (seg.count, width)
        if given.get("position_ids") is not None:
            given["position_ids"] = torch.arange(width, device=device).expand(seg.count, width)
    for args_ in (given, extra):  # every per-token input (Inkling 2's convolutions also take a dynamic input)
        for key, x in args_.items():
            if isinstance(x, torch.Tensor) and tuple(x.shape[:2]) == (b, t) and key != "position_ids":
                args_[key] = x.new_zeros(*grid, *x.shape[2:]).index_put(where, x.reshape(b * t, *x.shape[2:]))
    out = original(**given, **extra)

    def packed(x):  # every per-token output (ZAYA's projections return query, key and value) back in the row
        if isinstance(x, torch.Tensor) and tuple(x.shape[:2]) == grid:
            return x[where].reshape(b, t, *x.shape[2:])
        return x

    return tuple(packed(x) for x in out) if isinstance(out, tuple) else packed(out)


def mixers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's modules that mix tokens outside attention and that Packer keeps to each example."""
    return [m for m in model.modules() if type(m).__name__ in MIXERS]


def install(model: torch.nn.Module) -> list[str]:
    """Make every known token mixer of `model` exact under packing (idempotent); returns their class names.

    Wraps each mixer instance's forward (never the class: other models are untouched) and adds the forward
    pre-hook that computes each packed call's examples."""
    found = mixers(model)
    for m in found:
        if getattr(m, "_packer_original_forward", None) is None:
            m._packer_original_forward = m.forward
            m._packer_kind = MIXERS[type(m).__name__]
            m._packer_segments = None
            m.forward = types.MethodType(_mixer_forward, m)
    if not getattr(model, "_packer_hook", None):
        model._packer_hook = model.register_forward_pre_hook(_pre_hook, with_kwargs=True)
    return sorted({type(m).__name__ for m in found})


def _pre_hook(model: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Per call: the examples of the packed batch, handed to every mixer; no KV cache for packed batches;
    Llama 4's temperature tuning checked; mRoPE models given position_ids of the shape they read."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    embeds = kwargs.get("inputs_embeds")
    shape = tuple(ids.shape[:2]) if ids is not None else tuple(embeds.shape[:2]) if embeds is not None else None
    cu, pos = kwargs.get("cu_seq_lens_q"), kwargs.get("position_ids")
    seg = segments(*shape, cu, pos) if shape is not None else None
    packed = seg is not None and seg.count > seg.rows
    if packed:
        if kwargs.get("use_cache") is True:
            raise ConfigError("use_cache=True with a packed batch: a KV cache keeps per-row states that mean nothing "
                              "for several examples in one row; pass use_cache=False (training)")
        kwargs["use_cache"] = False
        _check_temperature_tuning(model, shape[1])
    images = any(kwargs.get(k) is not None for k in ("pixel_values", "pixel_values_videos"))
    if packed and images and (pos is None or pos.dim() == 2) and _uses_mrope(model):
        raise ConfigError("a packed batch with images and no multi-axis position_ids: the images' tokens need their "
                          "mRoPE positions computed per example (over the row they would continue from the example "
                          "before); pass position_ids [4, B, T] from packer.train.vision.packed_inputs")
    if pos is not None and pos.dim() == 2:
        kwargs["position_ids"] = mrope_position_ids(model, pos)
    for m in mixers(model):
        m._packer_segments = seg if packed else None
    return args, kwargs


# mRoPE text models that tell packed examples apart only from position_ids of 4 rows ([text; t; h; w]):
# a 2-D position_ids is expanded by them to 3 identical rows, which carries no text positions for the mask.
MROPE_FOUR_ROWS = frozenset({"qwen2_vl", "qwen2_5_vl", "qwen2_vl_text", "qwen2_5_vl_text", "glm4v", "glm4v_text",
                             "glm4v_moe", "glm4v_moe_text"})


def mrope_position_ids(model: torch.nn.Module, position_ids: torch.Tensor) -> torch.Tensor:
    """position_ids [B, T] restarting per example, in the shape the model reads packed rows from: [4, B, T]
    (the text row, then the temporal, height and width rows, equal for text: what get_rope_index gives a
    text-only example) for MROPE_FOUR_ROWS, else unchanged."""
    types_ = {getattr(getattr(m, "config", None), "model_type", None) for m in (model, *model.children())}
    if types_ & MROPE_FOUR_ROWS:
        return position_ids[None].expand(4, *position_ids.shape)
    return position_ids


def _uses_mrope(model: torch.nn.Module) -> bool:
    """Whether the model rotates by multi-axis positions (an mrope_section in its or its text config's rope)."""
    for config in (getattr(model, "config", None), getattr(getattr(model, "config", None), "text_config", None)):
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
        if isinstance(rope, dict) and rope.get("mrope_section"):
            return True
    types_ = {getattr(getattr(m, "config", None), "model_type", None) for m in (model, *model.children())}
    return bool(types_ & (MROPE_FOUR_ROWS | {"qwen3_vl", "qwen3_vl_moe", "qwen3_vl_text"}))


def _check_temperature_tuning(model: torch.nn.Module, width: int) -> None:
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    if getattr(config, "attn_temperature_tuning", False) and getattr(config, "no_rope_layers", None):
        floor = int(getattr(config, "floor_scale", 8192))
        if width > floor - 1:
            raise ConfigError(f"{type(model).__name__}'s NoPE layers scale queries by the row position "
                              f"(attn_temperature_tuning, floor_scale {floor}), not the example's: a packed row of "
                              f"{width} tokens would scale later examples differently from alone; pack at most "
                              f"{floor - 1} tokens a row, or set attn_temperature_tuning=False")


def chunked_boundaries(cu_seqlens: torch.Tensor, chunk: int) -> torch.Tensor:
    """cu_seqlens with every example cut every `chunk` tokens from its own start: chunked causal attention
    within an example is causal attention within each of its chunks (Llama 4's attention_chunk_size)."""
    cu = cu_seqlens.to(torch.long)
    lengths = cu[1:] - cu[:-1]
    pieces = (lengths + chunk - 1) // chunk
    which = torch.repeat_interleave(torch.arange(len(lengths), device=cu.device), pieces)
    k = torch.arange(int(pieces.sum()), device=cu.device) - torch.repeat_interleave(pieces.cumsum(0) - pieces, pieces)
    starts = cu[:-1][which] + k * chunk
    return torch.cat([starts, cu[-1:]]).to(cu_seqlens.dtype)


def chunk_size(module: torch.nn.Module) -> int | None:
    """The attention chunk of a chunked-attention layer (Llama 4's chunked_attention layer type), else None."""
    config, idx = getattr(module, "config", None), getattr(module, "layer_idx", None)
    layer_types = getattr(config, "layer_types", None)
    if config is None or idx is None or not layer_types or idx >= len(layer_types):
        return None
    if layer_types[idx] != "chunked_attention":
        return None
    size = getattr(config, "attention_chunk_size", None)
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"{type(module).__name__} layer {idx} is chunked_attention without a positive "
                          f"attention_chunk_size ({size!r})")
    return size


__all__ = ["MECHANISMS", "MIXERS", "Segments", "chunk_size", "chunked_boundaries", "install", "mixers", "mrope_position_ids",
           "segments"]
