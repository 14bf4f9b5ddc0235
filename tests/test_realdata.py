"""GSM8K through the whole pipeline with the GPT-2 tokenizer (skipped when ../shared/data is absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from packer.core import config as C
from packer.train.reader import PackedShards
from packer.pipeline import pack
from packer.build.templates import ALPACA
from packer.build.load_tokenizer import load_tokenizer

from conftest import SHARED

GSM8K = SHARED / "gsm8k" / "train.jsonl"
GPT2 = SHARED / "gpt2"
pytestmark = [pytest.mark.realdata,
              pytest.mark.skipif(not (GSM8K.is_file() and GPT2.is_dir()), reason="../shared/data absent")]


def test_gsm8k_2048_round_trip(tmp_path):
    tok = load_tokenizer(str(GPT2))
    report = pack([f"{GSM8K}#query=question,response=answer"], tmp_path / "r", tokenizer=tok,
                  plan_config=C.PlanConfig(pack_len=2048))
    ds = PackedShards(tmp_path / "r")
    assert ds.manifest["token_dtype"] == "uint16"
    assert report["num_examples"] == 7473 and report["truncated_examples"] == 0
    total = report["num_tokens"]
    assert report["lower_bound_packs"] >= -(-total // 2048)
    assert report["num_packs"] <= 1.02 * report["lower_bound_packs"]
    records = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    t = tok.build()
    for i in range(0, len(ds), 97):  # spot-check decoding of a sample of packs
        item = ds[i]
        cu = item["cu_seqlens"].tolist()
        for s, ex in enumerate(item["example_index"].tolist()):
            text = t.decode(item["input_ids"][cu[s]:cu[s + 1]].tolist(), skip_special_tokens=False)
            r = records[ex]
            assert text == ALPACA.replace("{query}", r["question"]) + r["answer"] + "<|endoftext|>"
    lens = np.concatenate([s.segment_lengths for s in ds.shards])
    assert lens.max() <= 464 + 1


@pytest.fixture(scope="module")
def gsm8k_lengths(tmp_path_factory):
    from packer.build.tokenize import tokenize
    from packer.core.formats.tokenized import read_columns

    out = tmp_path_factory.mktemp("gsm") / "t"
    tokenize([C.InputSpec(str(GSM8K), "question", "answer")], out, C.TokenizeConfig(), tokenizer=load_tokenizer(str(GPT2)))
    return read_columns(out, ["length"])["length"]


@pytest.mark.parametrize("pack_len,bfd_packs,nextfit_packs", [(1024, 1352, 1471), (2048, 670, 696), (4096, 333, 340)])
def test_gsm8k_planners_against_the_bound(gsm8k_lengths, pack_len, bfd_packs, nextfit_packs):
    import packer

    lb = packer.plan(gsm8k_lengths, pack_len, "bfd").lower_bound
    assert lb == -(-int(gsm8k_lengths.sum()) // pack_len)
    assert packer.plan(gsm8k_lengths, pack_len, "bfd").num_packs == bfd_packs  # TRL's BFD gives the same
    assert packer.plan(gsm8k_lengths, pack_len, "nextfit").num_packs == nextfit_packs
    p = packer.plan(gsm8k_lengths, pack_len, "ortools", time_limit=10)
    assert p.num_packs == lb and p.optimal is True


ARENA = SHARED / "arena_hard_slice" / "answers_gpt-4-0314.jsonl"


@pytest.mark.skipif(not ARENA.is_file(), reason="../shared/data absent")
@pytest.mark.parametrize("policy", ["truncate", "drop", "split"])
def test_arena_hard_over_long_policies(tmp_path, policy):
    """Long, code-heavy answers: 66 of 500 exceed 1024 tokens (Alpaca + EOS, GPT-2)."""
    tok = load_tokenizer(str(GPT2))
    report = pack([f"{ARENA}#query=prompt,response=response"], tmp_path / "r", tokenizer=tok,
                  plan_config=C.PlanConfig(pack_len=1024, overlong=policy, algorithm="ortools"))
    assert report["overlong_examples"] == 66
    ds = PackedShards(tmp_path / "r")
    lens = np.concatenate([s.segment_lengths for s in ds.shards])
    assert lens.max() <= 1024
    if policy == "truncate":
        assert report["truncated_examples"] + report["dropped_examples"] == 66
        assert report["num_examples"] == 500 - report["dropped_examples"]
    elif policy == "drop":
        assert report["dropped_examples"] == 66 and report["num_examples"] == 434
    else:
        assert report["split_examples"] == 66 and report["num_segments"] > 500
    assert report["num_packs"] <= report["lower_bound_packs"] * 1.01
    assert sum(f["lost_tokens"] for f in report["per_file"]) == report["truncated_tokens"] + report["dropped_tokens"]
