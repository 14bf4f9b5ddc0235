"""The wrapped layout (--kind text): documents end to end, cut every pack_len tokens, attention still
stopping at document boundaries; compared with best-fit in the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from packer.core import config as C
from packer.train.reader import PackedShards
from packer.core.errors import ConfigError
from packer.pipeline import pack
from packer.build.plan import wrap, wrapped_plan
from packer.core.formats.tokenized import open_tokenized

from conftest import write_jsonl


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=60), st.integers(1, 25))
def test_wrap_covers_every_token_once_and_fills_every_pack_but_the_last(lengths, pack_len):
    arr = np.array(lengths, np.int64)
    pieces, counts = wrap(arr, pack_len)
    plan = wrapped_plan(pieces[:, 2], pack_len)
    # Every token of every document exactly once, in order: pieces tile each document.
    for r, n in enumerate(lengths):
        mine = pieces[pieces[:, 0] == r]
        assert mine[0, 1] == 0 and np.array_equal(mine[1:, 1], (mine[:, 1] + mine[:, 2])[:-1])
        assert mine[-1, 1] + mine[-1, 2] == n
    fill = plan.pack_tokens(pieces[:, 2])
    assert np.all(fill[:-1] == pack_len) and 0 < fill[-1] <= pack_len
    assert plan.num_packs == -(-arr.sum() // pack_len) == plan.lower_bound
    assert counts["wrapped_tokens_without_left_context"] == int(pieces[pieces[:, 1] > 0, 2].sum())


def test_wrapped_run_keeps_document_boundaries_and_reports_against_best_fit(tmp_path):
    rng = np.random.default_rng(0)
    docs = [{"text": " ".join(f"w{int(x)}" for x in rng.integers(0, 99, int(rng.integers(5, 200))))} for _ in range(120)]
    data = write_jsonl(tmp_path / "t.jsonl", docs)
    tcfg = C.TokenizeConfig(kind="text")
    best = pack([str(data)], tmp_path / "best", tokenize_config=tcfg, plan_config=C.PlanConfig(pack_len=256, overlong="split"))
    wrapped = pack([str(data)], tmp_path / "wrap", tokenize_config=tcfg,
                   plan_config=C.PlanConfig(pack_len=256, overlong="split", layout="wrapped"),
                   write_config=C.WriteConfig(shuffle=False))
    assert wrapped["layout"] == "wrapped" and best["layout"] == "best-fit"
    assert wrapped["num_tokens"] == best["num_tokens"], "every token in both layouts"
    assert wrapped["num_packs"] == -(-wrapped["num_tokens"] // 256) and wrapped["efficiency"] >= best["efficiency"]
    assert wrapped["tokens_without_left_context"] > best["tokens_without_left_context"]
    ds = PackedShards(tmp_path / "wrap")
    _, tables = open_tokenized(tmp_path / "wrap" / "tokenized")
    ids = np.concatenate([np.asarray(t.column("input_ids").combine_chunks().flatten()) for t in tables])
    seen = np.concatenate([ds[i]["input_ids"].numpy() for i in range(len(ds))])
    assert np.array_equal(seen, ids), "the stream in order, every token once"
    for i in range(len(ds)):
        it = ds[i]
        starts = it["cu_seqlens"][:-1].long()
        assert (it["position_ids"][starts] == 0).all() and (it["labels"][starts] == -100).all()
    md = (tmp_path / "wrap" / "report.md").read_text()
    assert "tokens cut from their left context" in md


def test_wrapped_refuses_what_it_would_ignore(tmp_path):
    with pytest.raises(ConfigError, match="algorithm"):
        C.PlanConfig(layout="wrapped", algorithm="bfd", overlong="split")
    with pytest.raises(ConfigError, match="overlong"):
        C.PlanConfig(layout="wrapped")  # truncate: the sft default
    data = write_jsonl(tmp_path / "d.jsonl", [{"query": "a", "response": "b"}] * 3)
    with pytest.raises(ConfigError, match="for --kind text"):
        pack([str(data)], tmp_path / "r", plan_config=C.PlanConfig(pack_len=64, overlong="split", layout="wrapped"))
