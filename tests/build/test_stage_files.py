"""Every stage reads only what its manifest vouches for: the plan and write stages check the tokenized and
plan files they consume (seals, every file's sha256 once per run, the plan's structure), --rehash rebuilds
every stage after a repaired one, and `packer verify RUN` covers every stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from packer.build.plan import plan_stage
from packer.build.write import write_stage
from packer.cli import main
from packer.core import config as C
from packer.core.errors import FormatError
from packer.core.formats.plan import read_plan, write_plan
from packer.core.manifest import commit_stage, committed_stamp
from packer.pipeline import pack
from packer.train.reader import PackedShards

from conftest import sft_records, write_jsonl


@pytest.fixture
def run(tmp_path, byte_tok) -> Path:
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(80, seed=3))
    pack([str(data)], tmp_path / "run", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=512, algorithm="bfd"))
    return tmp_path / "run"


def _edit_in_place(path: Path, at: int, new: bytes) -> None:
    """Overwrite bytes in place (same size, same inode), as a tool or a disk fault would."""
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(new)


def _a_token_offset(chunk: Path) -> int:
    """The byte position of the token "a" of "apples" in a tokenized chunk's input_ids (uint32 ids; the
    byte tokenizer's id of a character is its byte)."""
    data = chunk.read_bytes()
    return data.index(b"".join(ord(c).to_bytes(4, "little") for c in "apples"))


def test_an_edited_tokenized_chunk_is_refused_when_planned_again(run):
    """Before: one token changed in tokenized/chunk-00000.arrow (same size) flowed into new shards at
    another --pack-len, and `packer verify` said ok."""
    chunk = run / "tokenized" / "chunk-00000.arrow"
    _edit_in_place(chunk, _a_token_offset(chunk), ord("b").to_bytes(4, "little"))
    with pytest.raises(FormatError, match="chunk-00000.arrow: checksum differs"):
        pack([str(run.parent / "d.jsonl")], run, tokenizer="byte", plan_config=C.PlanConfig(pack_len=256, algorithm="bfd"))


def test_edited_plan_files_are_refused(run):
    order = run / "plan" / "order.npy"
    data = order.read_bytes()
    _edit_in_place(order, len(data) - 8, data[len(data) - 16:len(data) - 8])  # last entry = the one before
    with pytest.raises(FormatError, match="order.npy: checksum differs"):
        write_stage(run / "tokenized", run / "plan", run / "shards2", C.WriteConfig())


def test_a_plan_whose_order_repeats_a_piece_is_refused_even_with_a_matching_seal(run, tmp_path):
    """The structure is checked too, whatever the hashes say: a plan written (and sealed) by a buggy
    planner with one piece twice and another never is refused, naming the piece."""
    _, pieces, order, offsets = read_plan(run / "plan")
    bad = order.copy()
    bad[-1] = bad[0]
    manifest = json.loads((run / "plan" / "manifest.json").read_text())
    body = {k: v for k, v in manifest.items() if k not in ("files", "manifest_sha256")}
    commit_stage(tmp_path / "plan", lambda tmp: (write_plan(tmp, pieces, bad, offsets), dict(body))[1])
    with pytest.raises(FormatError, match=f"piece {int(order[0])} is in 2 packs"):
        read_plan(tmp_path / "plan")
    empty = np.concatenate([[0], offsets])  # an empty first pack
    commit_stage(tmp_path / "plan2", lambda tmp: (write_plan(tmp, pieces, order, empty), dict(body))[1])
    with pytest.raises(FormatError, match="pack 0 is empty"):
        read_plan(tmp_path / "plan2")
    over = pieces.copy()
    over[order[0], 2] = 513  # a piece longer than the pack
    commit_stage(tmp_path / "plan3", lambda tmp: (write_plan(tmp, over, order, offsets), dict(body))[1])
    with pytest.raises(FormatError, match="more than pack_len 512"):
        read_plan(tmp_path / "plan3")


def test_a_plan_from_another_tokenized_stage_is_refused(run, tmp_path, byte_tok):
    other = write_jsonl(tmp_path / "o.jsonl", sft_records(30, seed=8))
    pack([str(other)], tmp_path / "other", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=512))
    with pytest.raises(FormatError, match="made from another tokenized stage"):
        write_stage(run / "tokenized", tmp_path / "other" / "plan", tmp_path / "shards", C.WriteConfig())


def test_rehash_rebuilds_every_stage_after_a_repaired_one(run, monkeypatch):
    """Shards written from a damaged tokenized copy (as the code before this check could) are rebuilt by
    --rehash once it repairs tokenized/, even though the shards' own files match their manifest."""
    chunk = run / "tokenized" / "chunk-00000.arrow"
    at = _a_token_offset(chunk)
    good = PackedShards(run)
    want = [good[i]["input_ids"].tolist() for i in range(len(good))]
    _edit_in_place(chunk, at, ord("b").to_bytes(4, "little"))
    import packer.core.formats.tokenized as T

    with monkeypatch.context() as m:  # the old code: no hash check on what the write stage reads
        m.setattr(T, "verify_once", lambda folder, manifest: None)
        write_stage(run / "tokenized", run / "plan", run / "shards", C.WriteConfig(), rebuild=True)
    bad = PackedShards(run)
    assert [bad[i]["input_ids"].tolist() for i in range(len(bad))] != want
    stamps = {s: committed_stamp(run / s) for s in ("tokenized", "plan", "shards")}
    pack([str(run.parent / "d.jsonl")], run, tokenizer="byte", plan_config=C.PlanConfig(pack_len=512, algorithm="bfd"),
         rehash=True)
    assert all(committed_stamp(run / s) != stamps[s] for s in stamps), "every stage after the repair is rebuilt"
    fixed = PackedShards(run)
    assert [fixed[i]["input_ids"].tolist() for i in range(len(fixed))] == want


def test_a_rerun_without_changes_rebuilds_nothing(run):
    stamps = {s: committed_stamp(run / s) for s in ("tokenized", "plan", "shards")}
    pack([str(run.parent / "d.jsonl")], run, tokenizer="byte", plan_config=C.PlanConfig(pack_len=512, algorithm="bfd"))
    assert {s: committed_stamp(run / s) for s in stamps} == stamps


@pytest.mark.parametrize("stage,name", [("tokenized", "chunk-00000.arrow"), ("plan", "pieces.npy"),
                                        ("shards", "shard-00000.bin")])
def test_packer_verify_covers_every_stage(run, stage, name):
    r = CliRunner().invoke(main, ["verify", str(run)])
    assert r.exit_code == 0 and "tokenized" in r.output and "plan" in r.output, r.output
    path = run / stage / name
    data = path.read_bytes()
    _edit_in_place(path, len(data) - 9, bytes([data[-9] ^ 1]))
    r = CliRunner().invoke(main, ["verify", str(run)])
    assert r.exit_code == 1 and f"{name}: checksum differs" in r.output, r.output
