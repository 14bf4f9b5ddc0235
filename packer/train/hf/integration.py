"""Hugging Face transformers integration (extra `hf`): attn_implementation="packer" and batch helpers.

`register()` adds "packer" to transformers' attention interface: every layer's attention runs through
`varlen_attention` over the packed examples, found from `cu_seq_lens_q` when the caller passes it
(what `batch_to_kwargs` and `PackedCollator` do) or else from `position_ids` restarting at 0 (the
padding-free convention).

Never silently different: `packer_attention` reads every keyword argument transformers passes. The
ones that shape attention (scaling, sliding_window, softcap, s_aux sinks, is_causal, dropout) are
implemented exactly; the ones that do not touch attention (see `NO_EFFECT`) are accepted; anything
else raises, naming the argument and the model class. Families are checked once per model config
against the model matrix (`packer.train.hf.families`, written by `make models`): a family that is not proven
equal packed vs unpacked is refused before the first step, with the reason.
"""

from __future__ import annotations

import torch

from packer.train.attention import BACKENDS, Variant, cu_seqlens_from_positions, unavailable, unsupported, varlen_attention
from packer.core.errors import ConfigError
from packer.train.hf.families import FAMILIES, TRANSFORMERS_VERSION
from packer.core.labels import IGNORE
from packer.train.hf.mixers import chunk_size, chunked_boundaries, install, mixers

NAME = "packer"

# Keyword arguments transformers passes that Packer implements (they change the attention math).
IMPLEMENTED = frozenset({"scaling", "dropout", "sliding_window", "softcap", "s_aux", "is_causal", "position_ids",
                         "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k",
                         "output_attentions"})  # False only: Packer returns no attention weights
# Keyword arguments that reach the attention function but do not change what it computes.
NO_EFFECT = frozenset({
    "num_items_in_batch",     # the loss normaliser, used after the model
    "output_hidden_states",   # returns per-layer activations; attention is unchanged
    "output_router_logits",   # MoE router outputs
    "use_cache",              # whether the model keeps a KV cache; packed training has one step, no past
    "cache_position",         # cache bookkeeping; query and key lengths are checked to be equal
    "return_dict",
    "logits_to_keep",         # which positions the LM head computes logits for, after the layers
    "labels",                 # the loss's targets (composite models hand them down), used after the layers
})
# Layer types whose tokens mix only through the attention function (chunked: packer_attention cuts each
# example into its chunks).
ATTENTION_LAYER_TYPES = frozenset({"full_attention", "sliding_attention", "chunked_attention"})
# Layer types whose tokens mix outside attention, in a mixer Packer keeps to each example (packer.train.hf.mixers)
# when the model's mixer classes are all known to it.
MIXER_LAYER_TYPES = frozenset({"linear_attention", "mamba", "conv", "recurrent", "hybrid", "hybrid_sliding"})
# Layer types that do not mix tokens at all (Nemotron-H's MLP and MoE blocks).
PER_TOKEN_LAYER_TYPES = frozenset({"mlp", "moe"})
# Class-name endings of token mixers outside attention: a module named so that Packer does not know is refused
# (but for attention classes that only share the name: Kimi Linear's MLA attention).
_MIXER_NAMES = ("Mixer", "GatedDeltaNet", "DeltaAttention", "LinearAttention", "LightningAttention", "ShortConv",
                "ShortConvolution", "MambaLayer", "Rglru", "RecurrentBlock", "CCAProjection")
_ATTENTION_CLASSES = frozenset({"KimiLinearAttention"})

_settings: dict = {"allow_unverified": False, "backend": "auto"}
_checked: dict[int, object] = {}  # id(config) -> config: each model config is checked once
_vocab_checked: dict[tuple[int, int, str], int] = {}  # (id(model), embeddings, run) -> largest token id


class UnsupportedModelError(ConfigError):
    """A model, or a setting of it, whose packed result would differ from the unpacked one."""


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ImportError("packer.train.hf.integration needs transformers: pip install 'packer[hf]'") from None


def family_refusal(config) -> str | None:
    """Why packed training of a model with this config would not equal unpacked training, or None.

    Reads the config's layer types and chunking, then the model matrix's verdict for its model_type.
    """
    kind = getattr(config, "model_type", None) or type(config).__name__
    subs = [c for c in vars(config).values() if hasattr(c, "model_type") and hasattr(c, "to_dict")]
    layer_types = {str(t) for c in (config, *subs) for t in (_safe_layer_types(c) or [])}
    other = sorted(layer_types - ATTENTION_LAYER_TYPES - MIXER_LAYER_TYPES - PER_TOKEN_LAYER_TYPES)
    if other:
        return (f"its layers of type {', '.join(other)} mix tokens outside the attention function, where "
                "Packer cannot keep the packed examples apart")
    entry = FAMILIES.get(kind)
    if entry is not None and entry["status"] == "refused":
        return entry["reason"]
    if entry is None and not _settings["allow_unverified"]:
        return (f"model type '{kind}' is not in Packer's model matrix (made on transformers "
                f"{TRANSFORMERS_VERSION}); run `make models` to verify it, or call "
                "register(allow_unverified=True) to train on it unverified")
    return None


def _safe_layer_types(config) -> list | None:
    try:
        return getattr(config, "layer_types", None)
    except Exception:  # noqa: BLE001  (a composite's per-layer attribute guard)
        return None


def _check_family(module: torch.nn.Module) -> None:
    config = getattr(module, "config", None)
    if config is None or id(config) in _checked:
        return
    why = family_refusal(config)
    if why is not None:
        raise UnsupportedModelError(f"attn_implementation='packer' refuses {type(module).__name__}: {why}")
    _checked[id(config)] = config  # holding the config keeps its id from being reused


def _refuse(module: torch.nn.Module, what: str, fix: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"packer attention cannot run {type(module).__name__} with {what}; {fix}")


def packer_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function: query (B, H, S, D), key/value (B, H_kv, S, D) -> (B, S, H, D).

    Raises UnsupportedModelError for any argument or mask it cannot honour exactly.
    """
    _check_family(module)
    unknown = sorted(k for k, v in kwargs.items() if k not in IMPLEMENTED | NO_EFFECT and v is not None)
    if unknown:
        raise _refuse(module, f"the argument(s) {', '.join(unknown)}",
                      "Packer does not implement them; use another attn_implementation for this model")
    if kwargs.get("output_attentions"):
        raise _refuse(module, "output_attentions=True", "it returns no attention weights; set it to False")
    if dropout:
        raise _refuse(module, f"attention dropout {dropout}", "set attention_dropout=0 in the model config")
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise _refuse(module, f"a {attention_mask.dim()}D attention mask",
                          "pass packed batches as position_ids or cu_seq_lens_q, without an attention mask")
        if not bool(attention_mask.all()):
            raise _refuse(module, "a padding mask", "pass position_ids (restarting at 0 per example) or "
                          "cu_seq_lens_q, and no attention_mask")
    b, h, s, d = query.shape
    if key.shape[2] != s:
        raise _refuse(module, f"{s} queries over {key.shape[2]} keys (a KV cache)",
                      "Packer attention is for training on packed batches; generate with 'sdpa' or 'eager'")
    cu = kwargs.get("cu_seq_lens_q")
    cu_k = kwargs.get("cu_seq_lens_k")
    if cu is not None and int(cu[-1]) != b * s and not getattr(module, "is_causal", True) and \
            kwargs.get("is_causal") is not True and "vision" in str(getattr(getattr(module, "config", None),
                                                                            "model_type", "")):
        # A bidirectional encoder inside the model (a vision tower: CLIP's attention in LLaVA) handed the text's
        # boundaries by the model's forward: its rows are its own sequences (one image each), as sdpa reads them.
        cu = cu_k = None
        kwargs = {k: v for k, v in kwargs.items() if k not in ("max_length_q", "max_length_k", "position_ids")}
    if cu is not None and cu_k is not None and (cu_k.shape != cu.shape or not torch.equal(cu_k.to(cu.device), cu)):
        raise _refuse(module, "cu_seq_lens_k different from cu_seq_lens_q", "pass the same boundaries for both")
    if cu is not None:
        if int(cu[-1]) != b * s:
            raise _refuse(module, f"cu_seq_lens_q ending at {int(cu[-1])} for {b * s} tokens",
                          "cu_seq_lens_q must cover the batch's tokens, rows concatenated")
        max_len = int(kwargs.get("max_length_q") or (cu[1:] - cu[:-1]).max())
    elif kwargs.get("position_ids") is not None:
        pos = kwargs["position_ids"]
        cu, max_len = cu_seqlens_from_positions(pos[0] if pos.dim() == 3 else pos)  # mRoPE rows: the first
    else:
        cu = torch.arange(0, (b + 1) * s, s, device=query.device, dtype=torch.int32)
        max_len = s
    chunk = chunk_size(module)
    if chunk is not None:  # chunked attention: each example's chunks, counted from its own start
        cu = chunked_boundaries(cu.to(query.device), chunk)
        max_len = min(max_len, chunk)
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else bool(causal)
    sinks = kwargs.get("s_aux")
    q, k, v = (t.transpose(1, 2).reshape(b * s, t.shape[1], t.shape[3]) for t in (query, key, value))
    out = varlen_attention(q, k, v, cu.to(query.device), max_len, causal=causal, softmax_scale=scaling,
                           window=kwargs.get("sliding_window"), softcap=kwargs.get("softcap"), sinks=sinks,
                           backend=_settings["backend"])
    return out.view(b, s, h, -1), None


def register(*, allow_unverified: bool = False, backend: str = "auto") -> None:
    """Make attn_implementation="packer" available to every transformers model that uses the interface.

    allow_unverified: also run model types the model matrix has not verified (never the refused ones).
    backend: the varlen attention backend every layer uses ("auto": the fastest that computes each
    layer's variant exactly; see packer.train.attention).
    """
    _require_transformers()
    if backend != "auto" and backend not in BACKENDS:
        raise ConfigError(f"unknown attention backend '{backend}'; choose auto or one of {', '.join(BACKENDS)}")
    _settings["backend"] = backend
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    if allow_unverified != _settings["allow_unverified"]:
        _checked.clear()
    _settings["allow_unverified"] = allow_unverified
    AttentionInterface.register(NAME, packer_attention)
    # Like flash attention, packer needs no dense mask: None when unpadded, the 2D mask otherwise.
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)


def check_model(model: torch.nn.Module) -> None:
    """Raise UnsupportedModelError before the first step when packed training of `model` would differ.

    The model's own config decides; the configs of its parts (a text decoder inside a composite model)
    are checked for layer types that mix tokens outside attention.
    """
    config = getattr(model, "config", None)
    parts = {id(m.config): m.config for m in model.modules() if getattr(m, "config", None) is not None}
    for c in [config, *(c for k, c in parts.items() if config is None or k != id(config))]:
        if c is None:
            continue
        why = family_refusal(c)
        if why is not None:
            raise UnsupportedModelError(f"attn_implementation='packer' refuses {type(model).__name__}: {why}")
        _checked[id(c)] = c
    inside = {id(sub) for m in mixers(model) for sub in m.modules()}  # parts of a known mixer are covered by it
    unknown = sorted({type(m).__name__ for m in model.modules()
                      if type(m).__name__.endswith(_MIXER_NAMES) and id(m) not in inside} - _ATTENTION_CLASSES)
    if unknown:
        raise UnsupportedModelError(f"attn_implementation='packer' refuses {type(model).__name__}: its "
                                    f"{', '.join(unknown)} mix tokens outside attention in a way Packer does not "
                                    "implement, so packed examples would leak into each other")
    types_ = {str(x) for c in parts.values() for x in (getattr(c, "layer_types", None) or [])}
    if types_ & MIXER_LAYER_TYPES and not mixers(model):
        raise UnsupportedModelError(f"attn_implementation='packer' refuses {type(model).__name__}: its layer types "
                                    f"{', '.join(sorted(types_ & MIXER_LAYER_TYPES))} name token mixers, but none of "
                                    "its modules is one Packer keeps to each packed example")


def model_variant(model: torch.nn.Module) -> Variant:
    """The attention variants a model's layers use (window, softcap, sinks), read from its config and
    parameters; the values are representative, what matters is which are set."""
    window = softcap = sinks = None
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None:
            types = getattr(c, "layer_types", None) or []
            if getattr(c, "sliding_window", None) and ("sliding_attention" in types or not types):
                window = int(c.sliding_window)
            softcap = softcap or getattr(c, "attn_logit_softcapping", None)
        if sinks is None and isinstance(getattr(m, "sinks", None), torch.Tensor):
            sinks = m.sinks
    return Variant(window=window, softcap=softcap, sinks=sinks)


def check_backend(model: torch.nn.Module, backend: str, training: bool = True) -> None:
    """Raise UnsupportedModelError when `backend` cannot compute this model's attention exactly on its
    device and dtype, naming the model, the setting and what to change."""
    if backend == "auto":
        return  # auto always finds an exact backend (sdpa computes every variant everywhere)
    p = next(model.parameters(), None)
    probe = torch.empty(0, device=p.device if p is not None else "cpu", dtype=p.dtype if p is not None else None)
    why = unavailable(backend, probe, training)
    variant = model_variant(model)
    why = why or unsupported(backend, variant)
    if why is not None:
        raise UnsupportedModelError(f"{type(model).__name__} ({', '.join(variant.names()) or 'plain attention'}) "
                                    f"cannot train on attention backend '{backend}': {why}")


def check_vocab(model: torch.nn.Module, data) -> int:
    """Refuse, before the first step, packs holding a token id the model has no embedding for.

    data: a run or shards folder, PackedShards, or a PackedLoader. The largest token id in its shards (one
    pass over the memory maps, done once per model and run) must be below the rows of the model's input
    embeddings: an id past them is an index error on CPU and a device-side assert (or silently wrong
    rows) on GPU, and means the run was tokenized for another model. Returns the largest id (-1: none).
    """
    from packer.train.reader import PackedShards

    ds = data if isinstance(data, PackedShards) else getattr(data, "dataset", None)
    if not isinstance(ds, PackedShards):
        ds = PackedShards(data)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(emb, "num_embeddings", None) or getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(rows, int):
        raise ConfigError(f"cannot tell how many token ids {type(model).__name__} embeds (no input embeddings "
                          "and no config.vocab_size); check the run's token ids against it yourself")
    key = (id(model), rows, str(ds.path))
    if key in _vocab_checked:
        return _vocab_checked[key]
    if ds.ranges is not None:  # a streamed run: its packs are not all here to scan
        vocab = int(ds.vocab_size)
        if vocab > rows:
            raise ConfigError(f"{ds.url}: the run's tokenizer has {vocab} ids and {type(model).__name__} embeds {rows}; "
                              "a streamed run is not scanned whole for its largest id: check a local copy with "
                              "use_packer_attention(model, data=LOCAL_RUN), or train the model it was packed for")
        _vocab_checked[key] = vocab - 1
        return vocab - 1  # every id read is checked against the vocabulary, batch by batch
    top = max((int(sh.tokens.max()) for sh in ds.shards if len(sh.tokens)), default=-1)
    if top >= rows:
        tok = ds.manifest.get("tokenizer", {})
        raise ConfigError(f"{ds.path}: token id {top} is outside {type(model).__name__}'s {rows} embeddings; "
                          f"the run was tokenized with '{tok.get('name', '?')}' (vocabulary {tok.get('vocab_size', '?')}): "
                          "re-pack with the model's tokenizer, or train the model it was packed for")
    _vocab_checked[key] = top
    return top


def use_packer_attention(model: torch.nn.Module, *, allow_unverified: bool = False,
                         backend: str = "auto", data=None) -> torch.nn.Module:
    """Switch a loaded transformers model to Packer's attention (registers it first).

    Raises UnsupportedModelError before the first step when the model's family is refused or not
    verified (see `register`), or when `backend` cannot compute its attention on its device and dtype.
    data (a run or shards folder, PackedShards or PackedLoader): also check once that every token id
    of the run has an embedding in the model (`check_vocab`).
    """
    register(allow_unverified=allow_unverified, backend=backend)
    check_model(model)
    check_backend(model, backend)
    if data is not None:
        check_vocab(model, data)
    model.set_attn_implementation(NAME)
    install(model)  # token mixers outside attention, kept to each packed example
    return model


def batch_to_kwargs(batch: dict) -> dict:
    """Model kwargs from a PackedLoader batch: ids, position_ids, labels and the varlen boundaries.

    The labels are in the loader's convention; transformers' causal LMs expect `unshifted`. A padded
    [B, pack_len] batch is passed as it is: its cu_seqlens cover the rows flattened, padding included
    as inert segments.
    """
    cu = batch["cu_seqlens"]
    return {
        "input_ids": batch["input_ids"],
        "position_ids": batch["position_ids"],
        "labels": batch["labels"],
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": int(batch["max_seqlen"]),
        "max_length_k": int(batch["max_seqlen"]),
        **{k: batch[k] for k in ("pixel_values", "image_grid_thw") if k in batch},  # runs with images
    }


def _text_row(position_ids) -> torch.Tensor:
    """A feature's text positions: position_ids itself, or row 0 of [4, n] (runs with images)."""
    p = torch.as_tensor(position_ids, dtype=torch.long)
    return (p[0] if p.dim() == 2 and p.shape[0] == 4 else p).reshape(-1)


def _segments(f: dict, i: int, x: torch.Tensor) -> torch.Tensor:
    """Segment boundaries (int64, [k + 1]) of one feature: a pack, a TRL-packed row, or one example."""
    n = len(x)
    if "cu_seqlens" in f:
        cu = torch.as_tensor(f["cu_seqlens"], dtype=torch.long)
    elif "seq_lengths" in f:  # TRL's packed rows
        lens = torch.as_tensor(f["seq_lengths"], dtype=torch.long).reshape(-1)
        if bool((lens <= 0).any()) or int(lens.sum()) != n:
            raise ConfigError(f"PackedCollator: feature {i}: seq_lengths {lens.tolist()} must be positive and sum "
                              f"to the {n} input_ids")
        cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    elif "position_ids" in f:  # rows packed elsewhere: positions restart at 0 in each example
        p = _text_row(f["position_ids"])
        starts = torch.nonzero(p == 0).flatten()
        if n and (len(starts) == 0 or int(starts[0]) != 0):
            raise ConfigError(f"PackedCollator: feature {i}: position_ids must start at 0")
        cu = torch.cat([starts, torch.tensor([n])])
    else:
        cu = torch.tensor([0, n])
    if len(cu) < 2 or int(cu[0]) != 0 or int(cu[-1]) != n or bool((cu[1:] <= cu[:-1]).any()):
        raise ConfigError(f"PackedCollator: feature {i}: segment boundaries {cu.tolist()} do not split its "
                          f"{n} tokens into non-empty segments")
    if "position_ids" in f:
        p = _text_row(f["position_ids"])
        want = torch.arange(n) - torch.repeat_interleave(cu[:-1], cu[1:] - cu[:-1])
        if p.shape != want.shape or not torch.equal(p, want):
            raise ConfigError(f"PackedCollator: feature {i}: position_ids must count 0, 1, 2, ... within each "
                              "example (restarting at 0); other position schemes are not implemented")
    return cu


# Keys a feature may carry; each is either used or (the bookkeeping ones) not part of the batch.
_FEATURE_KEYS = frozenset({"input_ids", "labels", "position_ids", "cu_seqlens", "max_seqlen", "seq_lengths",
                           "attention_mask", "completion_mask", "assistant_masks", "example_index",
                           "pixel_values", "image_grid_thw"})


class PackedCollator:
    """`Trainer` data collator: a list of features -> one padding-free row [1, total] with position_ids
    restarting per example, labels -100 at every example's first token, no attention mask, and the
    varlen boundaries. Trainer's num_items_in_batch (labels != -100) then counts exactly the targets.

    A feature is one of:
        a pack           PackedShards / pack_dataset item (input_ids, labels, position_ids, cu_seqlens)
        a packed row     from another tool: `seq_lengths` (TRL's packed format), or `position_ids`
                         restarting at 0 in each example; labels from `labels`, `completion_mask` or
                         `assistant_masks` (0 = no loss), else every token
        one example      input_ids, labels optional

    Three examples of lengths 3, 3, 4 in one row, then a plain example of 1::

        position_ids  0 1 2 0 1 2 0 1 2 3 0
        cu_seq_lens   [0, 3, 6, 10, 11]

    pad_to_multiple_of: pad the row's length up to a multiple (tensor cores, sequence parallelism);
    the padding is its own inert segment (labels -100, positions 0.., attending only to itself).
    """

    def __init__(self, *, pad_to_multiple_of: int | None = None, pad_token_id: int = 0):
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
            raise ConfigError(f"pad_to_multiple_of must be a positive integer or None; got {pad_to_multiple_of!r}")
        self.pad_to_multiple_of, self.pad_token_id = pad_to_multiple_of, pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        ids, pos, labels, bounds = [], [], [], [0]
        mrope, pixels, grids = [], [], []  # runs with images: [3, n] positions, pixel values, grids
        for i, f in enumerate(features):
            extra = sorted(set(f) - _FEATURE_KEYS)
            if extra:
                raise ConfigError(f"PackedCollator: feature {i} has field(s) {', '.join(extra)} that it does not "
                                  "implement; drop them (or set remove_unused_columns=True)")
            x = torch.as_tensor(f["input_ids"], dtype=torch.long).reshape(-1)
            if "attention_mask" in f and not bool(torch.as_tensor(f["attention_mask"]).all()):
                raise ConfigError(f"PackedCollator: feature {i} has padding in attention_mask; give unpadded "
                                  "features (the collator packs them without padding)")
            cu = _segments(f, i, x)
            if "labels" in f:
                y = torch.as_tensor(f["labels"], dtype=torch.long).reshape(-1).clone()
                if len(y) != len(x):
                    raise ConfigError(f"PackedCollator: feature {i}: {len(y)} labels for {len(x)} input_ids")
            else:
                y = x.clone()
            for name in ("completion_mask", "assistant_masks"):
                if name in f:
                    m = torch.as_tensor(f[name]).reshape(-1)
                    if len(m) != len(x):
                        raise ConfigError(f"PackedCollator: feature {i}: {len(m)} {name} for {len(x)} input_ids")
                    y[m == 0] = IGNORE
            firsts = cu[:-1]
            if "cu_seqlens" in f and len(y) and bool((y[firsts] != IGNORE).any()):
                raise ConfigError("PackedCollator needs unshifted labels (-100 at each example's first token); "
                                  "use PackedShards(..., label_mode='unshifted')")
            y[firsts] = IGNORE  # no example's first token is predicted from the example before it
            p = torch.arange(len(x)) - torch.repeat_interleave(cu[:-1], cu[1:] - cu[:-1])
            given = torch.as_tensor(f["position_ids"]) if "position_ids" in f else None
            if given is not None and given.dim() == 2:  # [4, n]: the text row, then mRoPE rows (packer.core.vision)
                if given.shape != (4, len(x)) or not torch.equal(given[0].long(), p):
                    raise ConfigError(f"PackedCollator: feature {i}: position_ids of shape {tuple(given.shape)} are not "
                                      "[4, n] with the text row restarting per example (PackedShards gives these)")
                mrope.append(given[1:].long())
            else:
                mrope.append(p.expand(3, -1))  # text: the same position on every axis
            if "image_grid_thw" in f and "pixel_values" not in f:
                raise ConfigError(f"PackedCollator: feature {i} has image_grid_thw without pixel_values")
            if "pixel_values" in f:
                if "image_grid_thw" in f:  # Qwen-VL: the grids, and the mRoPE positions they need
                    if given is None or given.dim() != 2:
                        raise ConfigError(f"PackedCollator: feature {i} has images but no [4, n] position_ids: its "
                                          "image tokens need their mRoPE positions (PackedShards of a run with images "
                                          "gives them)")
                    grids.append(torch.as_tensor(f["image_grid_thw"]).reshape(-1, 3))
                pixels.append(torch.as_tensor(f["pixel_values"]))
            ids.append(x)
            pos.append(p)
            labels.append(y)
            bounds.extend((cu[1:] + bounds[-1]).tolist())
        total = bounds[-1]
        m = self.pad_to_multiple_of
        pad = (-total) % m if m else 0
        if pad:
            ids.append(torch.full((pad,), self.pad_token_id, dtype=torch.long))
            pos.append(torch.arange(pad))
            mrope.append(torch.arange(pad).expand(3, -1))
            labels.append(torch.full((pad,), IGNORE, dtype=torch.long))
            bounds.append(total + pad)
        cu_all = torch.tensor(bounds, dtype=torch.int32)
        max_len = int((cu_all[1:] - cu_all[:-1]).max()) if len(cu_all) > 1 else 0
        out = {"input_ids": torch.cat(ids)[None], "position_ids": torch.cat(pos)[None],
               "labels": torch.cat(labels)[None], "cu_seq_lens_q": cu_all, "cu_seq_lens_k": cu_all,
               "max_length_q": max_len, "max_length_k": max_len}
        if pixels or any(f.get("position_ids") is not None and torch.as_tensor(f["position_ids"]).dim() == 2
                         for f in features):
            out["position_ids"] = torch.cat([out["position_ids"][None], torch.cat(mrope, 1)[:, None]], 0)  # [4, 1, T]
        if pixels:
            out["pixel_values"] = torch.cat(pixels)
            if grids:
                if len(grids) != len(pixels):
                    raise ConfigError("PackedCollator: some features have image_grid_thw and others not")
                out["image_grid_thw"] = torch.cat(grids)
        return out
