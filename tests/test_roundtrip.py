"""JSONL -> shards -> decode: every example's tokens exactly once, in order, with the right labels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from packer.core import config as C
from packer.train.reader import PackedShards
from packer.pipeline import pack
from packer.build.templates import ALPACA

from conftest import sft_records, write_jsonl


def shard_bytes(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run / "shards").iterdir())}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, byte_tok):
    tmp = tmp_path_factory.mktemp("sft")
    records = sft_records(300, long_every=37)
    data = write_jsonl(tmp / "data.jsonl", records)
    report = pack([str(data)], tmp / "run", tokenizer=byte_tok,
                  tokenize_config=C.TokenizeConfig(chunk_records=64),
                  plan_config=C.PlanConfig(pack_len=512), write_config=C.WriteConfig(shard_bytes=20_000))
    return records, tmp / "run", report


def test_every_example_once_in_order_and_decodes_to_template(sft_run, byte_tok):
    records, run, report = sft_run
    ds = PackedShards(run)
    tok = byte_tok.build()
    seen = {}
    for i in range(len(ds)):
        item = ds[i]
        cu = item["cu_seqlens"].numpy()
        assert len(item["input_ids"]) <= 512
        for s, ex in enumerate(item["example_index"].tolist()):
            assert ex not in seen, "an example appears twice"
            seen[ex] = item["input_ids"][cu[s]:cu[s + 1]].tolist()
    assert sorted(seen) == list(range(len(records)))
    assert len(ds.shards) > 1, "small shard_bytes must give several shards"
    for ex, ids in seen.items():
        r = records[ex]
        full = ALPACA.replace("{query}", r["query"]) + r["response"]
        expected = tok.encode(full, add_special_tokens=False).ids + [byte_tok.eos_id]
        if len(expected) > 512:  # truncate keeps the prompt and the start of the answer
            expected = expected[:512]
        assert ids == expected, f"example {ex} differs"
    assert report["truncated_examples"] == sum(
        1 for r in records if len((ALPACA.replace("{query}", r["query"]) + r["response"]).encode()) + 1 > 512)
    assert report["truncated_examples"] > 0


def test_labels_mask_prompt_and_never_cross_boundaries(sft_run):
    records, run, _ = sft_run
    for mode in ("unshifted", "shifted"):
        ds = PackedShards(run, label_mode=mode)
        for i in range(len(ds)):
            item = ds[i]
            ids, labels, cu = item["input_ids"], item["labels"], item["cu_seqlens"].tolist()
            pos = item["position_ids"]
            for s, ex in enumerate(item["example_index"].tolist()):
                a, b = cu[s], cu[s + 1]
                assert pos[a:b].tolist() == list(range(b - a))
                prompt = len(ALPACA.replace("{query}", records[ex]["query"]).encode())
                lab = labels[a:b]
                if mode == "unshifted":
                    assert (lab[:prompt] == -100).all()
                    assert (lab[prompt:] == ids[a + prompt:b]).all()
                else:
                    assert (lab[:prompt - 1] == -100).all()
                    assert (lab[prompt - 1:-1] == ids[a + prompt:b]).all()
                    assert lab[-1] == -100, "the last token of a segment must predict nothing"


def test_same_run_twice_byte_identical_any_workers(tmp_path, byte_tok):
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(200, seed=3))
    cfgs = dict(tokenize_config=C.TokenizeConfig(chunk_records=50), plan_config=C.PlanConfig(pack_len=300),
                write_config=C.WriteConfig(shard_bytes=8_000))
    pack([str(data)], tmp_path / "a", tokenizer=byte_tok, workers=0, **cfgs)
    pack([str(data)], tmp_path / "b", tokenizer=byte_tok, workers=2, **cfgs)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    for stage in ("tokenized", "plan"):
        a = {p.name: p.read_bytes() for p in (tmp_path / "a" / stage).iterdir()}
        b = {p.name: p.read_bytes() for p in (tmp_path / "b" / stage).iterdir()}
        assert a == b, stage
    pack([str(data)], tmp_path / "c", tokenizer=byte_tok,
         **dict(cfgs, write_config=C.WriteConfig(shard_bytes=8_000, seed=1)))
    assert shard_bytes(tmp_path / "a") != shard_bytes(tmp_path / "c"), "the seed must change the pack order"


def test_rerun_skips_completed_stages_and_redoes_changed_ones(tmp_path, byte_tok):
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(50))
    pack([str(data)], tmp_path / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=256))
    arrow = next((tmp_path / "r" / "tokenized").glob("*.arrow"))
    before = arrow.stat().st_mtime_ns
    pack([str(data)], tmp_path / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=256))
    assert arrow.stat().st_mtime_ns == before, "an up-to-date stage must not be redone"
    report = pack([str(data)], tmp_path / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=512))
    assert arrow.stat().st_mtime_ns == before, "a new pack length re-plans without re-tokenizing"
    assert report["pack_len"] == 512
    write_jsonl(data, sft_records(60))
    report = pack([str(data)], tmp_path / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=512))
    assert report["num_examples"] == 60, "changed input bytes must re-run every stage"


def test_interrupted_stage_leaves_nothing_that_looks_complete(tmp_path, byte_tok, monkeypatch):
    from packer.build import write as shards
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(50))

    def boom(task):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "write_one", boom)
    with pytest.raises(KeyboardInterrupt):
        pack([str(data)], tmp_path / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=256))
    run = tmp_path / "r"
    assert not (run / "shards").exists()
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []
    assert (run / "plan" / "manifest.json").is_file(), "completed stages stay"


def test_uint32_tokens_for_big_vocabularies(tmp_path, big_vocab_tok):
    recs = [{"query": "w1 w2 w3 ", "response": "w69990 w5 w69997"}, {"query": "w7 ", "response": "w8 w9"}]
    data = write_jsonl(tmp_path / "d.jsonl", recs)
    pack([str(data)], tmp_path / "r", tokenizer=big_vocab_tok,
         tokenize_config=C.TokenizeConfig(template="none"), plan_config=C.PlanConfig(pack_len=64))
    ds = PackedShards(tmp_path / "r")
    assert ds.manifest["token_dtype"] == "uint32"
    tok = big_vocab_tok.build()
    got = sorted(tok.decode(ds[i]["input_ids"].tolist(), skip_special_tokens=False) for i in range(len(ds)))
    assert any(t > 65535 for i in range(len(ds)) for t in ds[i]["input_ids"].tolist())
    assert "w1 w2 w3 w69990 w5 w69997 </s>" in " | ".join(got)


@pytest.mark.parametrize("policy", ["truncate", "drop", "split"])
def test_overlong_policies_are_counted(tmp_path, byte_tok, policy):
    recs = [{"query": "q", "response": "a" * 50}, {"query": "q", "response": "b" * 400},
            {"query": "p" * 300, "response": "c"}]
    data = write_jsonl(tmp_path / "d.jsonl", recs)
    report = pack([str(data)], tmp_path / "r", tokenizer=byte_tok,
                  tokenize_config=C.TokenizeConfig(template="none"),
                  plan_config=C.PlanConfig(pack_len=128, overlong=policy))
    ds = PackedShards(tmp_path / "r")
    lens = [int(ds[i]["cu_seqlens"][-1]) for i in range(len(ds))]
    assert max(lens) <= 128
    if policy == "truncate":
        # record 1 is cut to 128 tokens; record 2's prompt alone fills the pack, so it is dropped
        assert (report["truncated_examples"], report["truncated_tokens"]) == (1, 402 - 128)
        assert report["dropped_examples"] == 1 and report["num_examples"] == 2
    elif policy == "drop":
        assert report["dropped_examples"] == 2 and report["num_examples"] == 1
    else:
        assert report["split_examples"] == 2
        # record 1: 402 tokens -> 4 pieces; record 2: 302 tokens -> pieces 0-1 are all prompt, dropped
        assert report["num_segments"] == 1 + 4 + 1


def test_overlong_error_names_file_and_line(tmp_path, byte_tok):
    from packer.core.errors import InputError

    data = write_jsonl(tmp_path / "d.jsonl", [{"query": "q", "response": "ok"}, {"query": "q", "response": "z" * 99}])
    with pytest.raises(InputError, match=r"d\.jsonl:2: example has 10\d tokens, more than --pack-len 64"):
        pack([str(data)], tmp_path / "r", tokenizer=byte_tok, tokenize_config=C.TokenizeConfig(template="none"),
             plan_config=C.PlanConfig(pack_len=64, overlong="error"))


def test_split_pieces_reassemble_each_document_exactly(tmp_path, byte_tok):
    """--overlong split: piece k of a document holds its tokens [start, start + len), and the pieces of a
    document, ordered by start, rebuild it exactly (no piece re-reads the document's beginning)."""
    docs = [{"text": "".join(chr(97 + (i * 7 + j) % 26) for j in range(n))} for i, n in enumerate([5, 40, 71, 16, 33])]
    data = write_jsonl(tmp_path / "d.jsonl", docs)
    pack([str(data)], tmp_path / "r", tokenizer=byte_tok, tokenize_config=C.TokenizeConfig(kind="text"),
         plan_config=C.PlanConfig(pack_len=16, overlong="split"))
    ds = PackedShards(tmp_path / "r")
    pieces: dict[int, list[tuple[int, list[int]]]] = {}
    for i in range(len(ds)):
        v = ds.arrays(i)
        cu = [0, *np.cumsum(v["seg_lens"]).tolist()]
        for s, (ex, start) in enumerate(zip(v["example_index"].tolist(), v["segment_start"].tolist())):
            pieces.setdefault(ex, []).append((start, v["tokens"][cu[s]:cu[s + 1]].tolist()))
    tok = byte_tok.build()
    assert sorted(pieces) == list(range(len(docs)))
    for ex, parts in pieces.items():
        parts.sort()
        expected = tok.encode(docs[ex]["text"], add_special_tokens=False).ids + [byte_tok.eos_id]
        assert [s for s, _ in parts] == list(range(0, len(expected), 16)), f"document {ex}: pieces start every 16"
        assert sum((t for _, t in parts), []) == expected, f"document {ex} is not rebuilt by its pieces"
