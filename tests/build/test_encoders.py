"""The tokenizer backends: the fast one is used only behind its gate, and whichever runs, the shards and
manifests are byte-identical to the tokenizers reference's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from packer.build import encoders
from packer.build.load_tokenizer import load_tokenizer
from packer.build.tokenize import tokenize
from packer.core import config as C
from packer.core.errors import ConfigError
from packer.pipeline import pack

from conftest import SHARED, sft_records, write_jsonl

pytest.importorskip("fastokens")


def _files(run: Path) -> dict:
    return {s: (run / s / "manifest.json").read_bytes() for s in ("tokenized", "plan", "shards")}


def _chat_records(n: int) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": r["query"]},
                          {"role": "assistant", "content": r["response"]}]} for r in sft_records(n, seed=4)]


def _bpe_folder(tmp_path: Path) -> Path:
    """A small byte-level BPE trained here, with an added special token, as a tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [r["query"] + " " + r["response"] for r in sft_records(400, seed=1)] * 3
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|end|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d = tmp_path / "bpe"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end|>"}))
    return d


_INFOS: dict = {}


def _loaded(spec: str):
    """Each tokenizer loaded once for the module (Llama 3's 17 MB tokenizer.json takes ~1 s)."""
    if spec not in _INFOS:
        _INFOS[spec] = load_tokenizer(spec)
    return _INFOS[spec]


def _tokenizers(tmp_path: Path) -> list[str]:
    found = ["byte", str(_bpe_folder(tmp_path))]
    found += [str(SHARED / n) for n in ("gpt2", "llama3") if (SHARED / n / "tokenizer.json").is_file()]
    return found


@pytest.mark.parametrize("kind", ["sft", "chat", "text"])
def test_every_backend_gives_byte_identical_runs(tmp_path, kind):
    """Over every kind and every tokenizer here (a BPE trained in the test, the byte tokenizer, and GPT-2
    and Llama 3 from ../shared/data when present): the fast backend runs and its runs equal the reference's."""
    records = {"sft": sft_records(120, seed=2, long_every=40), "chat": _chat_records(80),
               "text": [{"text": r["query"] + "\n" + r["response"]} for r in sft_records(120, seed=3)]}[kind]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    for spec in _tokenizers(tmp_path):
        runs, info = {}, _loaded(spec)
        for backend in ("tokenizers", "fast"):
            out = tmp_path / f"{Path(spec).name}-{backend}"
            report = pack([str(data)], out, tokenizer=info, plan_config=C.PlanConfig(pack_len=512, algorithm="bfd"),
                          tokenize_config=C.TokenizeConfig(kind=kind, tokenizer_backend=backend))
            assert report["tokenizer"]["backend"] == backend, (spec, report["tokenizer"])
            runs[backend] = _files(out)
        assert runs["fast"] == runs["tokenizers"], spec


class _Planted:
    """A fast encoder that differs from tokenizers on `word` only: it passes the load-time gate (the hard
    strings do not hold the word) and must be caught while the run encodes."""

    def __init__(self, real, word: str):
        self.real, self.word = real, word

    def encode(self, texts):
        ids, lengths = self.real.encode(texts)
        ids = ids.copy()
        starts = np.cumsum(lengths) - lengths
        for i, t in enumerate(texts):
            if self.word in t and lengths[i]:
                ids[starts[i]] += 1  # one id off
        return ids, lengths


def _plant(monkeypatch, word: str) -> None:
    real = encoders.fast.load
    monkeypatch.setattr(encoders, "_LOADED", {})  # encoders are built once per process: start afresh
    monkeypatch.setattr(encoders.fast, "load", lambda text: _Planted(real(text), word))


def test_a_mismatching_fast_encoder_makes_auto_fall_back_and_fast_refuse(tmp_path, monkeypatch, byte_tok):
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(200, seed=5))
    want = pack([str(data)], tmp_path / "ref", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=512),
                tokenize_config=C.TokenizeConfig(tokenizer_backend="tokenizers"))
    _plant(monkeypatch, "apples")
    report = pack([str(data)], tmp_path / "auto", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=512))
    tk = report["tokenizer"]
    assert tk["backend"] == "tokenizers" and "differed from tokenizers during the run" in tk["reason"]
    assert "d.jsonl:" in tk["reason"] and "for the span" in tk["reason"], "the first differing record and span"
    assert _files(tmp_path / "auto") == _files(tmp_path / "ref") and report["num_tokens"] == want["num_tokens"]
    with pytest.raises(ConfigError, match=r"--tokenizer-backend fast: .*d.jsonl:\d+: the fast tokenizer backend gives "
                                          r"\[.* where tokenizers gives \["):
        pack([str(data)], tmp_path / "fast", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=512),
             tokenize_config=C.TokenizeConfig(tokenizer_backend="fast"))
    assert not (tmp_path / "fast" / "tokenized").exists(), "nothing was written"


def test_the_sample_gate_checks_the_first_spans_and_a_seeded_share_and_all_checks_every_span(tmp_path, monkeypatch,
                                                                                              byte_tok):
    """The sample is the first 64 spans and 1% of the rest, the same on a rerun (seeded by the chunk);
    --check-tokens all compares every span, so it catches a difference in any one of them."""
    picked = encoders.sample(600, "x", "sample")
    assert picked[:64].tolist() == list(range(64)) and len(picked) == 64 + 6 and picked.tolist() == sorted(set(picked))
    assert encoders.sample(600, "x", "sample").tolist() == picked.tolist() != encoders.sample(600, "y", "sample").tolist()
    records = sft_records(300, seed=6)
    data = write_jsonl(tmp_path / "d.jsonl", records)
    details: dict = {}
    m = tokenize([str(data)], tmp_path / "all", C.TokenizeConfig(check_tokens="all"), tokenizer=byte_tok,
                 details=details)
    assert details["backend"] == "fast" and details["spans_checked"] == details["spans"] == 2 * m["counts"]["examples"]
    sampled: dict = {}
    tokenize([str(data)], tmp_path / "sample", C.TokenizeConfig(), tokenizer=byte_tok, details=sampled)
    assert sampled["spans"] == 600 and sampled["spans_checked"] == 64 + 6
    records[250]["response"] = "zebra " + records[250]["response"]  # one span, outside the first 64
    write_jsonl(tmp_path / "d.jsonl", records)
    _plant(monkeypatch, "zebra")
    caught: dict = {}
    tokenize([str(data)], tmp_path / "all", C.TokenizeConfig(check_tokens="all"), tokenizer=byte_tok, details=caught)
    assert caught["backend"] == "tokenizers" and "zebra" in caught["reason"]


def test_the_load_time_gate(tmp_path, monkeypatch):
    info = load_tokenizer(str(_bpe_folder(tmp_path)))
    choice = encoders.choose(info.json, True, "auto")
    assert choice.backend == "fast" and "hard strings" in choice.reason
    _plant(monkeypatch, "naïve")  # a word of the built-in corpus
    choice = encoders.choose(info.json, True, "auto")
    assert choice.backend == "tokenizers" and "differs from tokenizers on the hard string" in choice.reason
    with pytest.raises(ConfigError, match="--tokenizer-backend fast: the fast backend differs"):
        encoders.choose(info.json, True, "fast")
    monkeypatch.undo()
    monkeypatch.setattr(encoders, "_LOADED", {})
    assert "SentencePiece" in encoders.choose(info.json, False, "auto").reason  # needs offsets: tokenizers
    with pytest.raises(ConfigError, match="character offsets"):
        encoders.choose(info.json, False, "fast")

    def missing(text):
        raise ImportError("No module named 'fastokens'")

    monkeypatch.setattr(encoders, "_LOADED", {})
    monkeypatch.setattr(encoders.fast, "load", missing)
    assert encoders.choose(info.json, True, "auto").reason == "auto: fastokens is not installed (pip install fastokens)"


def test_a_metaspace_tokenizer_says_why_it_keeps_tokenizers(tmp_path):
    """fastokens refuses to load Metaspace (Llama 2-style) tokenizers: auto says so and uses tokenizers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab={"▁": 0, "a": 1, "b": 2, "▁a": 3, "</s>": 4}, merges=[("▁", "a")]))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    choice = encoders.choose(tok.to_str(), True, "auto")
    assert choice.backend == "tokenizers" and "fastokens cannot load this tokenizer" in choice.reason
    with pytest.raises(ConfigError, match="fastokens cannot load this tokenizer"):
        encoders.choose(tok.to_str(), True, "fast")
