"""transformers models with attn_implementation="packer": packed == unpacked (CPU, fp32, random init),
and every argument or model feature Packer does not implement refused by name."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import packer.train.hf.integration as hf  # noqa: E402
from packer.train.hf.families import FAMILIES  # noqa: E402
from packer.train.hf.integration import batch_to_kwargs, register, use_packer_attention  # noqa: E402
from packer.train.hf.verify import WINDOW, tiny_config, verify  # noqa: E402

LONG = (150, 40, 131, 2)  # longer than gpt-oss's window of 128

# The representative set (DECISIONS: CI runs these; `make models` runs every family).
REPRESENTATIVE = {
    "llama": ({}, None),
    "mistral": ({}, None),                            # sliding_window 8 < most examples
    "qwen2": ({}, None),                              # a window on every layer
    "gemma2": ({}, None),                             # soft-capping 2, alternating local/global layers
    "gemma3_text": ({}, None),
    "phi3": ({}, None),
    "olmo2": ({}, None),
    "gpt_oss": ({"sliding_window": 128}, LONG),       # sinks, window 128
}


def factory(model_type: str, **overrides):
    cfg = tiny_config(model_type, **overrides)

    def make(attn: str):
        torch.manual_seed(0)
        return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).float()

    return make, cfg


@pytest.mark.parametrize("model_type", sorted(REPRESENTATIVE))
def test_representative_family_packed_equals_unpacked(model_type):
    overrides, lengths = REPRESENTATIVE[model_type]
    make, cfg = factory(model_type, **overrides)
    window = getattr(cfg, "sliding_window", None)
    lengths = lengths or (23, 9, 31, 2, 17, 12)
    if window:
        assert max(lengths) > window, "examples must be longer than the window for the window to matter"
    v = verify(make, lengths)
    assert v.equal, f"{model_type}: {v}"
    assert FAMILIES.get(model_type, {}).get("status") == "verified", "the model matrix agrees"


def _old_adapter(drop):
    """packer_attention as it was before: these keyword arguments silently dropped."""
    real = hf.packer_attention

    def leaky(module, q, k, v, mask, scaling=None, dropout=0.0, **kw):
        return real(module, q, k, v, mask, scaling=scaling, dropout=dropout,
                    **{n: x for n, x in kw.items() if n not in drop})

    return leaky


@pytest.mark.parametrize("model_type,overrides,drop", [
    ("mistral", {}, {"sliding_window"}),
    ("gemma2", {"sliding_window": 64}, {"softcap"}),        # window wider than the examples: softcap alone
    ("gpt_oss", {"sliding_window": 64}, {"s_aux"}),
])
def test_negative_control_dropping_a_variant_is_detected(model_type, overrides, drop, monkeypatch):
    make, _ = factory(model_type, **overrides)
    monkeypatch.setattr(hf, "packer_attention", _old_adapter(drop))  # what register() installs
    v = verify(make)
    assert not v.equal, f"dropping {drop} must show as a difference; got {v}"
    monkeypatch.undo()
    register()


def test_sdpa_dropping_softmax_scale_is_detected(monkeypatch):
    """A mutation that drops softmax_scale in the sdpa backend must fail the family check."""
    import packer.train.attention as A

    real = A.BACKENDS["sdpa"]
    monkeypatch.setitem(A.BACKENDS, "sdpa", lambda q, k, v, cu, m, causal, scale, variant:
                        real(q, k, v, cu, m, causal, None, variant))
    make, _ = factory("gemma2")  # query_pre_attn_scalar makes its scale differ from 1/sqrt(head_dim)
    assert not verify(make).equal


@pytest.mark.parametrize("model_type,reason", [
    ("deepseek_v32", "indexed_attention"),   # a token indexer picks keys outside the attention function
    ("inkling_text", "position_bias"),        # a learned bias Packer's attention does not apply
])
def test_families_that_cannot_be_exact_are_refused_before_the_first_step(model_type, reason):
    make, _ = factory(model_type)
    model = make("eager")
    with pytest.raises(hf.UnsupportedModelError, match=reason):
        use_packer_attention(model)


def test_bloom_alibi_is_refused_by_the_matrix():
    assert FAMILIES["bloom"]["status"] == "refused"
    make, _ = factory("bloom")
    with pytest.raises(hf.UnsupportedModelError, match="bloom|attention"):
        use_packer_attention(make("eager"))


def test_unverified_family_is_refused_unless_allowed(monkeypatch):
    monkeypatch.setattr(hf, "FAMILIES", {})
    make, _ = factory("llama")
    with pytest.raises(hf.UnsupportedModelError, match="not in Packer's model matrix.*allow_unverified"):
        use_packer_attention(make("eager"))
    use_packer_attention(make("eager"), allow_unverified=True)
    register()


def _attention_call(**kwargs):
    register()
    make, _ = factory("llama")
    module = make("eager").model.layers[0].self_attn
    q = torch.randn(1, 4, 6, 16)
    kv = torch.randn(1, 2, 6, 16)
    return hf.packer_attention(module, q, kv, kv, kwargs.pop("attention_mask", None), **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"position_bias": torch.zeros(1)}, "LlamaAttention with the argument.*position_bias"),
    ({"something_new": 3}, "something_new"),
    ({"output_attentions": True}, "output_attentions"),
    ({"dropout": 0.1}, "attention dropout 0.1"),
    ({"attention_mask": torch.zeros(1, 1, 6, 6)}, "4D attention mask"),
    ({"attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0]])}, "padding mask"),
    ({"cu_seq_lens_q": torch.tensor([0, 3, 6], dtype=torch.int32),
      "cu_seq_lens_k": torch.tensor([0, 2, 6], dtype=torch.int32)}, "cu_seq_lens_k different"),
    ({"cu_seq_lens_q": torch.tensor([0, 3, 5], dtype=torch.int32)}, "ending at 5 for 6 tokens"),
])
def test_every_argument_not_implemented_is_refused_by_name(kwargs, match):
    with pytest.raises(hf.UnsupportedModelError, match=match):
        _attention_call(**kwargs)


def test_arguments_without_effect_are_accepted():
    out, weights = _attention_call(num_items_in_batch=torch.tensor(5), use_cache=False, output_attentions=False,
                                   position_bias=None, position_ids=torch.arange(6)[None])
    assert out.shape == (1, 6, 4, 16) and weights is None


def test_kv_cache_is_refused():
    register()
    make, _ = factory("llama")
    module = make("eager").model.layers[0].self_attn
    with pytest.raises(hf.UnsupportedModelError, match="KV cache"):
        hf.packer_attention(module, torch.randn(1, 4, 1, 16), torch.randn(1, 2, 7, 16), torch.randn(1, 2, 7, 16), None)


@pytest.mark.parametrize("via", ["position_ids", "cu_seqlens"])
def test_boundaries_reach_every_layer(via, monkeypatch):
    """Both ways of marking examples give every layer the same cu_seqlens."""
    register()
    calls = []
    real = hf.varlen_attention
    monkeypatch.setattr(hf, "varlen_attention", lambda *a, **k: calls.append(a[3].tolist()) or real(*a, **k))
    lens = [7, 1, 12, 4]
    ids = torch.randint(1, 100, (1, sum(lens)))
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    make, _ = factory("mistral")
    model = make(hf.NAME)
    kw = {"input_ids": ids, "position_ids": pos}
    if via == "cu_seqlens":
        kw = batch_to_kwargs({"input_ids": ids, "position_ids": pos, "labels": ids, "cu_seqlens": cu,
                              "max_seqlen": max(lens)})
    model(**kw)
    assert len(calls) == model.config.num_hidden_layers and all(c == cu.tolist() for c in calls)


def test_without_isolation_examples_leak():
    """Negative control: the same model with one causal mask over the pack differs from unpacked."""
    make, _ = factory("llama")
    lens = [9, 6, 11]
    exs = [torch.randint(1, 100, (n,)) for n in lens]
    ids = torch.cat(exs)[None]
    leaky = make("eager")(input_ids=ids, position_ids=torch.cat([torch.arange(n) for n in lens])[None])
    alone = make("eager")(input_ids=exs[2][None])
    assert (leaky.logits[0, 15:] - alone.logits[0]).abs().max() > 1e-3
    assert WINDOW < max(lens)


# ---- PackedCollator: packs, rows packed elsewhere, plain examples, padding -------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from packer.core.errors import ConfigError  # noqa: E402
from packer.train.hf.integration import PackedCollator  # noqa: E402


def test_collator_honours_trl_seq_lengths_and_restarting_positions():
    ids = list(range(10, 20))
    out = PackedCollator()([{"input_ids": ids, "seq_lengths": [3, 3, 4]}, {"input_ids": [7]}])
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0]]
    assert out["cu_seq_lens_q"].tolist() == [0, 3, 6, 10, 11]
    assert out["labels"].tolist() == [[-100, 11, 12, -100, 14, 15, -100, 17, 18, 19, -100]]
    again = PackedCollator()([{"input_ids": ids, "position_ids": [0, 1, 2, 0, 1, 2, 0, 1, 2, 3]}, {"input_ids": [7]}])
    assert all(torch.equal(out[k], again[k]) for k in out if isinstance(out[k], torch.Tensor))
    masked = PackedCollator()([{"input_ids": ids, "seq_lengths": [3, 3, 4], "completion_mask": [0, 1, 1] * 3 + [1]}])
    assert masked["labels"].tolist() == [[-100, 11, 12, -100, 14, 15, -100, 17, 18, 19]]


def test_collator_pads_to_a_multiple_with_an_inert_segment():
    out = PackedCollator(pad_to_multiple_of=8, pad_token_id=5)([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}])
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5, 5, 5, 5]]
    assert out["cu_seq_lens_q"].tolist() == [0, 3, 5, 8]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert out["labels"].tolist() == [[-100, 2, 3, -100, 5, -100, -100, -100]]
    exact = PackedCollator(pad_to_multiple_of=5)([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}])
    assert exact["cu_seq_lens_q"].tolist() == [0, 3, 5]


@pytest.mark.parametrize("feature,match", [
    ({"input_ids": [1, 2, 3], "seq_lengths": [2, 2]}, "sum to the 3"),
    ({"input_ids": [1, 2, 3], "position_ids": [1, 2, 3]}, "start at 0"),
    ({"input_ids": [1, 2, 3], "position_ids": [0, 2, 4]}, "count 0, 1, 2"),
    ({"input_ids": [1, 2, 3], "token_type_ids": [0, 0, 0]}, "token_type_ids"),
    ({"input_ids": [1, 2, 3], "attention_mask": [1, 1, 0]}, "padding in attention_mask"),
    ({"input_ids": [1, 2, 3], "labels": [1, 2]}, "2 labels for 3"),
])
def test_collator_refuses_what_it_cannot_honour(feature, match):
    with pytest.raises(ConfigError, match=match):
        PackedCollator()([feature])


@st.composite
def features(draw):
    out = []
    for _ in range(draw(st.integers(1, 4))):
        lens = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
        ids = draw(st.lists(st.integers(1, 50), min_size=sum(lens), max_size=sum(lens)))
        kind = draw(st.sampled_from(["plain", "seq_lengths", "position_ids", "pack"]))
        if kind == "plain":
            lens = [len(ids)]
            f = {"input_ids": ids}
        elif kind == "seq_lengths":
            f = {"input_ids": ids, "seq_lengths": lens}
        else:
            pos = [p for n in lens for p in range(n)]
            f = {"input_ids": ids, "position_ids": pos}
            if kind == "pack":
                cu = [0]
                for n in lens:
                    cu.append(cu[-1] + n)
                labels = [(-100 if j in cu[:-1] else t) for j, t in enumerate(ids)]
                f.update(cu_seqlens=cu, labels=labels)
        out.append((f, lens))
    return out, draw(st.sampled_from([None, 1, 4, 8]))


@settings(max_examples=150, deadline=None)
@given(features())
def test_collator_properties(case):
    """Every token once and in order, positions restart per example, no label at an example's first token,
    and boundaries that split exactly the examples (plus one inert padding segment)."""
    feats, multiple = case
    out = PackedCollator(pad_to_multiple_of=multiple)([f for f, _ in feats])
    lens = [n for _, ls in feats for n in ls]
    total = sum(lens)
    ids = [t for f, _ in feats for t in f["input_ids"]]
    got = out["input_ids"][0].tolist()
    assert got[:total] == ids
    cu = out["cu_seq_lens_q"].tolist()
    pad = (-total) % multiple if multiple else 0
    assert len(got) == total + pad and cu[-1] == len(got)
    want_cu = [0]
    for n in lens + ([pad] if pad else []):
        want_cu.append(want_cu[-1] + n)
    assert cu == want_cu
    pos, labels = out["position_ids"][0].tolist(), out["labels"][0].tolist()
    for a, b in zip(cu[:-1], cu[1:]):
        assert pos[a:b] == list(range(b - a))
        assert labels[a] == -100
        if a < total:
            assert labels[a + 1:b] == ids[a + 1:b]
    assert all(x == -100 for x in labels[total:])
    assert out["max_length_q"] == max(b - a for a, b in zip(cu[:-1], cu[1:]))


def test_a_backend_that_cannot_compute_the_model_is_refused_before_the_first_step():
    make, _ = factory("gpt_oss")
    with pytest.raises(hf.UnsupportedModelError, match=r"GptOssForCausalLM \(window, sinks\).*'flex'.*backward"):
        use_packer_attention(make("eager"), backend="flex")
    with pytest.raises(hf.UnsupportedModelError, match=r"GptOssForCausalLM \(window, sinks\).*'flex'.*sinks; "
                       r"use backend='sdpa'"):
        hf.check_backend(make("eager"), "flex", training=False)
    make, _ = factory("gemma2")
    with pytest.raises(hf.UnsupportedModelError, match=r"Gemma2ForCausalLM \(window, softcap\).*'flash_attn'"):
        use_packer_attention(make("eager"), backend="flash_attn")
    make, _ = factory("llama")
    use_packer_attention(make("eager"), backend="sdpa")
    with pytest.raises(ConfigError, match="unknown attention backend 'fast'"):
        use_packer_attention(make("eager"), backend="fast")
    register()


def test_a_run_with_token_ids_past_the_embeddings_is_refused_before_the_first_step(tmp_path, byte_tok):
    from conftest import sft_records, write_jsonl

    from packer.core import config as C
    from packer.core.errors import ConfigError
    from packer.train.loader import PackedLoader
    from packer.pipeline import pack

    data = write_jsonl(tmp_path / "d.jsonl", sft_records(30))
    pack([str(data)], tmp_path / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=256))
    top = max(int(sh.tokens.max()) for sh in PackedLoader(tmp_path / "r", 1).dataset.shards)

    def model(vocab: int):
        return transformers.AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=vocab))

    assert use_packer_attention(model(top + 1), data=tmp_path / "r") is not None  # every id has a row
    assert hf.check_vocab(model(300), PackedLoader(tmp_path / "r", 2)) == top
    with pytest.raises(ConfigError, match=f"token id {top} is outside LlamaForCausalLM's {top} embeddings"):
        use_packer_attention(model(top), data=tmp_path / "r")
