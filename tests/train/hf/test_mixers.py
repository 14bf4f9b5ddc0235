"""Hybrid models packed exactly: every token mixer outside attention (gated delta-nets, Mamba-1 and -2,
short convolutions, lightning attention, RG-LRU, RWKV) and chunked attention keeps each packed example to
itself, one family per mechanism (CPU, fp32, tiny random models); each with a negative control in which
the same mixer runs across the examples and the same test fails."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

import packer.train.hf.integration as hf  # noqa: E402
from packer.core.errors import ConfigError  # noqa: E402
from packer.train.hf import mixers as M  # noqa: E402
from packer.train.hf.verify import LENGTHS, tiny_config, verify  # noqa: E402

# One family per mechanism (DECISIONS: exact against each example alone through the model's own torch path).
MECHANISMS = {
    "qwen3_5_text": "gated delta-net (Qwen3.5)",
    "kimi_linear": "Kimi delta attention",
    "minimax": "lightning attention",
    "falcon_h1": "Mamba-2 beside attention",
    "mamba": "Mamba-1",
    "lfm2": "short convolution",
    "llama4_text": "chunked attention",
    "recurrent_gemma": "RG-LRU with its convolution",
    "rwkv": "RWKV time and channel mixing",
}


def factory(model_type: str, **overrides):
    cfg = tiny_config(model_type, **overrides)

    def make(attn: str):
        torch.manual_seed(0)
        return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).float()

    return make


@pytest.fixture(autouse=True)
def _registered():
    hf.register()
    yield
    hf.register()  # allow_unverified back to its default for the tests after these


@pytest.mark.parametrize("model_type", sorted(MECHANISMS))
def test_packed_equals_each_example_alone(model_type):
    v = verify(factory(model_type))
    print(f"\n{model_type} ({MECHANISMS[model_type]}): {v}, mixer calls {v.mixer_calls}")
    assert v.equal, f"{model_type}: {v}"
    assert v.mixer_calls > 0 or model_type == "llama4_text", "the mixers must run packed"


BOUNDARY_ARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


def _leak(monkeypatch, model_type: str) -> None:
    """The negative control: mixers run over the packed row as one sequence (the boundaries kept from them),
    chunks counted from the row's start."""

    def across(self, hidden_states, *args, **kwargs):
        return self._packer_original_forward(hidden_states, *args,
                                             **{k: v for k, v in kwargs.items() if k not in BOUNDARY_ARGS})

    monkeypatch.setattr(M, "_mixer_forward", across)
    if model_type == "llama4_text":
        monkeypatch.setattr(hf, "chunk_size", lambda module: None)


@pytest.mark.parametrize("model_type", sorted(MECHANISMS))
def test_negative_control_mixer_across_examples_differs(model_type, monkeypatch):
    _leak(monkeypatch, model_type)
    v = verify(factory(model_type))
    print(f"\n{model_type} without resets: {v}")
    assert not v.equal and max(v.logits, v.grads) > 1e-3, f"{model_type}: {v}"


# ----------------------------------------------------------------------------------------------- Trainer
# The goal families: one Trainer step (SGD, gradient accumulation 2) packed vs unpacked.
GOAL_FAMILIES = ("qwen3_5_text", "qwen3_next", "olmo_hybrid", "falcon_h1", "nemotron_h", "lfm2", "llama4_text",
                 "mamba")


@pytest.mark.parametrize("model_type", GOAL_FAMILIES)
def test_trainer_step_packed_equals_unpacked(model_type, tmp_path):
    from tests.train.hf.test_trainer import packed_vs_unpacked

    loss, weights = packed_vs_unpacked(model_type, tmp_path)
    print(f"\n{model_type}: loss relative difference {loss:.1e}, weights {weights:.1e} of the update")
    assert loss < 1e-5 and weights < 1e-4, (loss, weights)


@pytest.mark.parametrize("model_type", GOAL_FAMILIES)
def test_trainer_negative_control_differs(model_type, tmp_path, monkeypatch):
    from tests.train.hf.test_trainer import packed_vs_unpacked

    _leak(monkeypatch, model_type)
    loss, weights = packed_vs_unpacked(model_type, tmp_path)
    print(f"\n{model_type} without resets: loss relative difference {loss:.1e}, weights {weights:.1e}")
    assert loss > 1e-5 or weights > 1e-4, (loss, weights)


# ------------------------------------------------------------------------------------------ boundaries
@st.composite
def packed_rows(draw):
    rows = draw(st.integers(1, 3))
    width = draw(st.integers(1, 12))
    lengths = []
    for _ in range(rows):
        left = width
        while left:
            n = draw(st.integers(1, left))
            lengths.append(n)
            left -= n
    return rows, width, lengths


@given(packed_rows())
@settings(max_examples=200, deadline=None)
def test_segments_from_cu_seqlens_and_positions_agree(case):
    rows, width, lengths = case
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    pos = torch.cat([torch.arange(n) for n in lengths]).view(rows, width)
    a, b = M.segments(rows, width, cu_seqlens=cu), M.segments(rows, width, position_ids=pos)
    assert a.lengths.tolist() == b.lengths.tolist() == lengths
    assert torch.equal(a.example, b.example) and torch.equal(a.position, pos.flatten())
    assert torch.equal(a.cu_seqlens(), cu)
    # every token once: (example, position) pairs are distinct and each example's positions are 0..n-1
    assert torch.equal(torch.bincount(a.example, minlength=len(lengths)), torch.tensor(lengths))
    mrope = M.segments(rows, width, position_ids=pos[None].expand(4, rows, width))
    assert mrope.lengths.tolist() == lengths


def test_segments_refuse_an_example_across_rows():
    with pytest.raises(ConfigError, match="every row must start an example"):
        M.segments(2, 4, cu_seqlens=torch.tensor([0, 3, 6, 8]))
    with pytest.raises(ConfigError, match="does not split"):
        M.segments(1, 4, cu_seqlens=torch.tensor([0, 3]))


@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.integers(1, 9))
@settings(max_examples=200, deadline=None)
def test_chunked_boundaries_count_from_each_example(lengths, chunk):
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    out = M.chunked_boundaries(cu, chunk)
    expected = sorted({int(s) + k for s, n in zip(cu[:-1], lengths) for k in range(0, n, chunk)} | {int(cu[-1])})
    assert out.tolist() == expected and out.dtype == cu.dtype


# ------------------------------------------------------------------------------------------- refusals
def _packed_batch(model, lengths=(5, 7)):
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(1, vocab, (1, sum(lengths)))
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    return ids, pos


def test_use_cache_true_with_a_packed_batch_is_refused():
    model = hf.use_packer_attention(factory("lfm2")("eager"), allow_unverified=True)
    ids, pos = _packed_batch(model)
    with pytest.raises(ConfigError, match="use_cache=True"):
        model(input_ids=ids, position_ids=pos, use_cache=True)
    model(input_ids=ids, position_ids=pos)  # the default: the cache is turned off for a packed batch


def test_a_cache_reaching_a_mixer_is_refused():
    model = factory("lfm2")("eager")
    M.install(model)
    mixer = M.mixers(model)[0]
    seg = M.segments(1, 12, position_ids=torch.cat([torch.arange(5), torch.arange(7)])[None])
    mixer._packer_segments = seg
    with pytest.raises(ConfigError, match="cache"):
        mixer(torch.zeros(1, 12, model.config.hidden_size), cache=object())


def test_unknown_mixer_class_is_refused():
    model = factory("llama")("eager")

    class SomeNewMixer(torch.nn.Module):
        def forward(self, x):
            return x.cumsum(1)

    model.model.layers[0].extra = SomeNewMixer()
    with pytest.raises(hf.UnsupportedModelError, match="SomeNewMixer"):
        hf.check_model(model)


def test_mixer_layer_types_without_known_mixers_are_refused():
    model = factory("lfm2")("eager")
    for layer in model.model.layers:  # the conv modules renamed: Packer no longer knows them
        if hasattr(layer, "conv"):
            layer.conv.__class__ = type("OtherConv", (torch.nn.Module,), {"forward": layer.conv.forward})
    with pytest.raises(hf.UnsupportedModelError, match="conv name token mixers"):
        hf.check_model(model)


def test_llama4_temperature_tuning_refused_above_floor_scale():
    model = factory("llama4_text", attn_temperature_tuning=True, floor_scale=16)("eager")
    model = hf.use_packer_attention(model, allow_unverified=True)
    ids, pos = _packed_batch(model, (9, 9))
    with pytest.raises(ConfigError, match="attn_temperature_tuning"):
        model(input_ids=ids, position_ids=pos)
    ids, pos = _packed_batch(model, (7, 8))
    model(input_ids=ids, position_ids=pos)  # rows of at most floor_scale - 1 tokens are exact


def test_llama4_temperature_tuning_packed_equals_alone_within_floor_scale():
    v = verify(factory("llama4_text", attn_temperature_tuning=True, floor_scale=128))
    assert v.equal, str(v)


# ------------------------------------------------------------------------------- native kernel mapping
def _torch_function(kernelized):
    """The model's own torch implementation behind transformers' kernel-hub wrapper."""
    f = kernelized
    for _ in range(4):
        if hasattr(f, "__wrapped__"):
            f = f.__wrapped__
        elif isinstance(f, torch.nn.Module):
            f = next(c.cell_contents for c in type(f).forward.__closure__ if callable(c.cell_contents))
        else:
            return f
    return f


def _boundaries(seq_idx, cu):
    if cu is not None:
        return cu.tolist()
    if seq_idx is not None:
        flat = seq_idx.flatten()
        return [0, *(torch.nonzero(flat[1:] != flat[:-1]).flatten() + 1).tolist(), len(flat)]
    return None


def _varlen(kernelized, time_dim: int):
    """A stand-in kernel with the documented varlen semantics (causal-conv1d's seq_idx, fla's cu_seqlens:
    each example from a fresh state), made of the model's own torch function run on each example."""
    import inspect

    torch_function = _torch_function(kernelized)
    names = list(inspect.signature(torch_function).parameters)

    def kernel(*args, **kwargs):
        bounds = _boundaries(kwargs.pop("seq_idx", None), kwargs.pop("cu_seqlens", None))
        kwargs.pop("cu_seq_lens_q", None)
        if bounds is None:
            return torch_function(*args, **kwargs)
        full = dict(zip(names, args)) | kwargs
        width = full[names[0]].shape[time_dim]
        pieces = []
        for s, e in zip(bounds[:-1], bounds[1:]):
            pieces.append(torch_function(**{
                k: v.narrow(time_dim, s, e - s) if isinstance(v, torch.Tensor) and k not in ("weight", "bias")
                and v.dim() > time_dim and v.shape[time_dim] == width else v for k, v in full.items()}))
        if isinstance(pieces[0], tuple):
            return torch.cat([p[0] for p in pieces], dim=time_dim), None
        return torch.cat(pieces, dim=time_dim)

    return kernel


def test_native_path_hands_kernels_the_boundaries_they_document(monkeypatch):
    """On CUDA with the kernels installed, mixers get the packed row with seq_idx / cu_seqlens instead of
    being unpacked. Here the kernels are stand-ins with the documented varlen semantics (each example
    from a fresh state), so the packed row through the native path must equal each example alone; the
    same stand-ins given no boundaries leak, which shows the mapping is what makes it exact."""
    from transformers.models.lfm2 import modeling_lfm2 as lfm
    from transformers.models.qwen3_5 import modeling_qwen3_5 as qwen

    monkeypatch.setattr(M, "_native", lambda kind, hidden: kind is not None)
    # causal-conv1d: x [B, C, T], seq_idx [B, T]; fla: q/k/v [1, T, H, D], cu_seqlens [N + 1]
    for mod in (lfm, qwen):
        monkeypatch.setattr(mod, "causal_conv1d_fn", _varlen(mod.causal_conv1d_fn, 2))
    monkeypatch.setattr(qwen, "torch_chunk_gated_delta_rule", _varlen(qwen.torch_chunk_gated_delta_rule, 1))
    for model_type in ("lfm2", "qwen3_5_text"):
        v = verify(factory(model_type))
        assert v.equal, f"{model_type} through the native path: {v}"
    monkeypatch.setattr(M.Segments, "seq_idx", lambda self: torch.zeros(1, self.rows * self.width, dtype=torch.int32))
    monkeypatch.setattr(M.Segments, "cu_seqlens",
                        lambda self: torch.tensor([0, self.rows * self.width], dtype=torch.int32))
    v = verify(factory("lfm2"))
    assert not v.equal, "kernels given no boundaries must leak, or this test proves nothing"


# ------------------------------------------------------------------------------------------------ mRoPE
def _vl_model(model_type: str):
    from transformers import AutoModelForImageTextToText

    cfg = tiny_config(model_type)
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(cfg, attn_implementation="eager").float(), cfg


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v"])
def test_mrope_text_rows_equal_get_rope_index_per_example(model_type):
    model, cfg = _vl_model(model_type)
    lengths = LENGTHS
    vocab = model.get_input_embeddings().num_embeddings
    exs = [torch.randint(1, min(vocab, 100), (n,)) for n in lengths]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    packed = M.mrope_position_ids(model, pos)
    inner = model.model
    start = 0
    for ex in exs:
        ids = ex[None]
        alone, _ = inner.get_rope_index(ids, mm_token_type_ids=torch.zeros_like(ids),
                                        attention_mask=torch.ones_like(ids))
        got = packed[..., start:start + len(ex)]
        rows = got[1:] if got.shape[0] == 4 else got[None].expand(3, *got.shape)
        assert torch.equal(rows, alone), model_type
        start += len(ex)


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v"])
def test_mrope_model_text_rows_packed_equal_alone(model_type):
    from transformers import AutoModelForImageTextToText

    cfg = tiny_config(model_type)

    def make(attn):
        torch.manual_seed(0)
        return AutoModelForImageTextToText.from_config(cfg, attn_implementation=attn).float()

    hf.register(allow_unverified=True)  # the matrix covers causal LMs; these are image-text models
    v = verify(make)
    assert v.equal, f"{model_type}: {v}"


def _positions_only_error(model_type: str) -> float:
    """Largest logit difference, packed rows given position_ids only (no cu_seq_lens: what a collator that
    only restarts positions passes) vs each example alone."""
    from transformers import AutoModelForImageTextToText

    cfg = tiny_config(model_type)

    def make(attn):
        torch.manual_seed(0)
        return AutoModelForImageTextToText.from_config(cfg, attn_implementation=attn).float()

    packed, alone = hf.use_packer_attention(make("eager"), allow_unverified=True), make("eager")
    exs = [torch.randint(1, 100, (n,), generator=torch.Generator().manual_seed(n)) for n in LENGTHS]
    pos = torch.cat([torch.arange(len(x)) for x in exs])[None]
    with torch.no_grad():
        out = packed(input_ids=torch.cat(exs)[None], position_ids=pos).logits[0]
        ref = torch.cat([alone(input_ids=x[None], use_cache=False).logits[0] for x in exs])
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "glm4v", "qwen3_vl"])
def test_mrope_rows_from_position_ids_only(model_type):
    err = _positions_only_error(model_type)
    print(f"\n{model_type}, position_ids only: {err:.1e}")
    assert err < 1e-4, err


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "glm4v"])
def test_mrope_negative_control_two_d_positions_differ(model_type, monkeypatch):
    """Given [B, T] position_ids as they are, these models expand them to three identical rows and lose
    the text row their attention tells packed examples apart by: examples attend across each other."""
    monkeypatch.setattr(M, "mrope_position_ids", lambda model, position_ids: position_ids)
    err = _positions_only_error(model_type)
    print(f"\n{model_type}, 2-D position_ids: {err:.1e}")
    assert err > 1e-3, err
