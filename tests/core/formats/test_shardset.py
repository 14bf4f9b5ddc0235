"""shardset: every check of a shards folder, in process, one broken manifest field or file at a time
(tests/test_damage.py runs the same kinds of damage through every reader in subprocesses)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from packer.core import config as C
from packer.core.errors import FormatError
from packer.core.manifest import SEAL, seal
from packer.pipeline import pack
from packer.core.cache import cache_dir as _cache_dir
from packer.core.formats.shards import ShardSet, check_lineage, check_manifest, resolve, verify_once

from conftest import sft_records, write_jsonl


@pytest.fixture(scope="module")
def run(tmp_path_factory, byte_tok) -> Path:
    tmp = tmp_path_factory.mktemp("shardset")
    data = write_jsonl(tmp / "d.jsonl", sft_records(60, seed=5))
    pack([str(data)], tmp / "run", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=512),
         write_config=C.WriteConfig(shard_bytes=12_000))
    return tmp / "run"


def _manifest(run: Path) -> dict:
    return json.loads((run / "shards" / "manifest.json").read_text())


def test_a_good_run_opens_with_its_counts(run):
    m = _manifest(run)
    entries, pack_len, vocab = check_manifest(run / "shards", m)
    assert len(entries) == len(m["shards"]) > 2 and pack_len == 512 and vocab == m["tokenizer"]["vocab_size"]
    ds = ShardSet(run)
    assert ds.path == run / "shards" and len(ds) == m["counts"]["packs"]
    assert ds.locate(len(ds) - 1)[1] == ds.shards[-1].num_packs - 1 and ds.locate(-1) == ds.locate(len(ds) - 1)
    assert ds.locate(-len(ds)) == ds.locate(0) == (ds.shards[0], 0)
    first = ds.arrays(0)
    assert len(first["tokens"]) == len(first["loss_mask"]) == int(first["seg_lens"].sum())
    assert len(first["example_index"]) == len(first["segment_start"]) == len(first["seg_lens"])
    with pytest.raises(IndexError, match=f"pack {len(ds)} out of range for {len(ds)} packs"):
        ds.locate(len(ds))
    with pytest.raises(IndexError):
        ds.locate(-len(ds) - 1)


def test_the_smallest_legal_pack_len_and_vocabulary_are_accepted(run):
    m = copy.deepcopy(_manifest(run))
    m["pack_len"], m["tokenizer"]["vocab_size"] = 1, 1
    assert check_manifest(run / "shards", m)[1:] == (1, 1)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.pop("shards"), "'shards', 'files' or 'counts' is missing"),
    (lambda m: m.update(files=[]), "'shards', 'files' or 'counts' is missing"),
    (lambda m: m.update(counts="x"), "'shards', 'files' or 'counts' is missing"),
    (lambda m: m.update(pack_len=0), "pack_len 0 and vocab_size .* must be positive"),
    (lambda m: m.update(pack_len=True), "top level: 'pack_len' is True, not a count"),
    (lambda m: m.update(pack_len=-3), "top level: 'pack_len' is -3, not a count"),
    (lambda m: m["tokenizer"].update(vocab_size=0), "must be positive"),
    (lambda m: m["tokenizer"].update(vocab_size="257"), "tokenizer: 'vocab_size' is '257', not a count"),
    (lambda m: m.update(tokenizer="gpt2"), "tokenizer: 'vocab_size' is None, not a count"),
    (lambda m: m["shards"].__setitem__(0, "shard-00000.bin"), r"shards\[0\] names None, expected 'shard-00000.bin'"),
    (lambda m: m["shards"][1].update(file="shard-00009.bin"), r"shards\[1\] names 'shard-00009.bin', expected 'shard-00001.bin'"),
    (lambda m: m["shards"].append(dict(m["shards"][-1])), r"names 'shard-0000\d.bin', expected"),
    (lambda m: m["shards"][0].update(packs=1.5), r"shards\[0\]: 'packs' is 1.5, not a count"),
    (lambda m: m["shards"][2].update(segments=None), r"shards\[2\]: 'segments' is None, not a count"),
    (lambda m: m["shards"][0].update(packs=m["shards"][0]["packs"] + 1), "the shards hold .* packs, counts.packs says"),
    (lambda m: m["counts"].update(tokens=m["counts"]["tokens"] - 1), "the shards hold .* tokens, counts.tokens says"),
    (lambda m: m["counts"].update(segments=-1), "counts: 'segments' is -1, not a count"),
    (lambda m: m["files"]["shard-00000.bin"].update(bytes=1), "truncated or grown: .* bytes, manifest.json records 1"),
    (lambda m: m["files"].pop("shard-00001.bin"), "manifest.json records None"),
    (lambda m: m["files"].update({"extra.bin": {"bytes": 1, "sha256": "0"}}), "'files' lists extra.bin, which no shard"),
])
def test_check_manifest_refuses_each_broken_entry(run, edit, match):
    m = copy.deepcopy(_manifest(run))
    edit(m)
    with pytest.raises(FormatError, match=match):
        check_manifest(run / "shards", m)


def test_shard_files_must_be_regular_files_inside_the_folder(run, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    m = _manifest(run)
    for e in m["shards"]:
        (shards / e["file"]).write_bytes((run / "shards" / e["file"]).read_bytes())
    (shards / "shard-00001.bin").unlink()
    with pytest.raises(FormatError, match="shard-00001.bin: shard file is missing"):
        check_manifest(shards, m)
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes((run / "shards" / "shard-00001.bin").read_bytes())
    (shards / "shard-00001.bin").symlink_to(outside)
    with pytest.raises(FormatError, match="is not a regular file inside the shards folder"):
        check_manifest(shards, m)
    (shards / "shard-00001.bin").unlink()
    (shards / "shard-00001.bin").mkdir()
    with pytest.raises(FormatError, match="is not a regular file inside the shards folder"):
        check_manifest(shards, m)


def test_lineage_ties_the_shards_to_the_plan_beside_them(run):
    m = _manifest(run)
    check_lineage(run / "shards", m)
    check_lineage(run / "elsewhere", {"lineage": {}})  # a shards folder on its own: nothing to compare
    for stage in ("plan", "tokenized"):
        stale = copy.deepcopy(m)
        stale["lineage"][stage] = "0" * 64
        with pytest.raises(FormatError, match=f"written from another {stage} stage"):
            check_lineage(run / "shards", stale)
    no_lineage = {k: v for k, v in m.items() if k != "lineage"}
    with pytest.raises(FormatError, match="written from another plan stage"):
        check_lineage(run / "shards", no_lineage)


def test_lineage_checks_each_stage_present_and_an_unreadable_one(run, tmp_path):
    import shutil

    r = tmp_path / "run"
    shutil.copytree(run, r)
    m = _manifest(r)
    (r / "plan" / "manifest.json").unlink()  # no plan beside the shards: the tokenized stage still counts
    stale = copy.deepcopy(m)
    stale["lineage"]["tokenized"] = "0" * 64
    with pytest.raises(FormatError, match="written from another tokenized stage"):
        check_lineage(r / "shards", stale)
    check_lineage(r / "shards", m)
    (r / "tokenized" / "manifest.json").write_text("not json")
    with pytest.raises(FormatError, match="written from another tokenized stage"):
        check_lineage(r / "shards", m)


def _resealed(run: Path, copy_to: Path, edit) -> Path:
    """A copy of the run whose shards manifest was edited and resealed (only the headers can tell)."""
    import shutil

    shutil.copytree(run, copy_to)
    path = copy_to / "shards" / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    m[SEAL] = seal(m)
    path.write_text(json.dumps(m))
    return copy_to


def _move(key: str):
    def edit(m):
        m["shards"][0][key] += 1
        m["shards"][1][key] -= 1
    return edit


@pytest.mark.parametrize("name,edit,match", [
    ("packs", _move("packs"), "shard-00000.bin: packs, segments or tokens differ from manifest.json"),
    ("segments", _move("segments"), "shard-00000.bin: packs, segments or tokens differ from manifest.json"),
    ("pack_len", lambda m: m.update(pack_len=600), "header pack_len 512 differs from the manifest's 600"),
])
def test_shardset_compares_each_header_with_the_manifest(run, tmp_path, name, edit, match):
    with pytest.raises(FormatError, match=match):
        ShardSet(_resealed(run, tmp_path / name, edit), verify=False)


def test_shardset_verifies_by_default(run, tmp_path):
    """verify=True is the default: a byte changed in place (same size, so only a checksum sees it) is
    refused on open; verify=False opens it."""
    import shutil

    r = tmp_path / "run"
    shutil.copytree(run, r)
    shard = r / "shards" / "shard-00001.bin"
    data = bytearray(shard.read_bytes())
    data[-200] ^= 1  # a token or mask byte (the packs come after the head)
    shard.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="shard-00001.bin: checksum differs from manifest.json"):
        ShardSet(r)
    assert len(ShardSet(r, verify=False)) == len(ShardSet(run))


def test_verify_once_hashes_once_per_run_and_again_after_a_change(run, tmp_path, monkeypatch):
    import packer.core.manifest as S

    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "cache"))
    assert _cache_dir() == tmp_path / "cache"
    calls = []
    real = S.check_files
    monkeypatch.setattr(S, "check_files", lambda folder, m: (calls.append(folder), real(folder, m)))
    m = _manifest(run)
    verify_once(run / "shards", m)
    verify_once(run / "shards", m)
    assert len(calls) == 1, "the marker skips the second hash"
    markers = list((tmp_path / "cache" / "verified").iterdir())
    assert len(markers) == 1 and markers[0].read_text().strip() == str((run / "shards").resolve())
    shard = run / "shards" / "shard-00000.bin"
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    verify_once(run / "shards", m)
    assert len(calls) == 2, "a file's new mtime means another hash"
    resealed = dict(m, manifest_sha256="f" * 64)
    verify_once(run / "shards", resealed)
    assert len(calls) == 3, "another manifest means another hash"


def test_cache_dir_follows_packer_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("PACKER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache_dir() == tmp_path / "xdg" / "packer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _cache_dir() == tmp_path / "home" / ".cache" / "packer"


def test_resolve_takes_a_run_or_a_shards_folder(run, tmp_path):
    assert resolve(run) == run / "shards" and resolve(run / "shards") == run / "shards"
    assert resolve(tmp_path) == tmp_path


def _flip_a_token_keeping_mtime(shard: Path, vocab: int) -> None:
    """Change one token id in place (to another id inside the vocabulary, so the id check cannot see it),
    same size, and put the mtime back as a careful editor or a restore tool would."""
    st = shard.stat()
    data = bytearray(shard.read_bytes())
    at = 64  # the tokens array starts right after the 64-byte header
    old = int.from_bytes(data[at:at + 2], "little")
    new = old - 1 if old > 1 else old + 1
    assert new < vocab
    data[at:at + 2] = new.to_bytes(2, "little")
    with open(shard, "r+b") as f:  # in place: the inode stays the same
        f.write(data)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert shard.stat().st_mtime_ns == st.st_mtime_ns and shard.stat().st_size == st.st_size


def test_the_verified_marker_does_not_vouch_for_a_copy(run, tmp_path, monkeypatch):
    """A copied run keeps sizes and mtimes (cp -p, rsync -t, shutil.copytree), so a marker keyed by them
    would skip hashing the copy: one edited token would reach the batches. Keyed as git's index keys files
    (device, inode, size, mtime, ctime), the copy is hashed on its first open and the edit refused."""
    import shutil

    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "cache"))
    ShardSet(run)  # verified: the marker is written
    copy_ = tmp_path / "copy"
    shutil.copytree(run, copy_)
    _flip_a_token_keeping_mtime(copy_ / "shards" / "shard-00000.bin", _manifest(run)["tokenizer"]["vocab_size"])
    with pytest.raises(FormatError, match="shard-00000.bin: checksum differs"):
        ShardSet(copy_)


def test_the_verified_marker_sees_an_edit_in_place_with_the_mtime_put_back(run, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "cache"))
    mine = tmp_path / "mine"
    shutil.copytree(run, mine)
    ShardSet(mine)  # verified
    ShardSet(mine)  # and the marker is used
    _flip_a_token_keeping_mtime(mine / "shards" / "shard-00000.bin", _manifest(run)["tokenizer"]["vocab_size"])
    with pytest.raises(FormatError, match="shard-00000.bin: checksum differs"):
        ShardSet(mine)


def test_resolve_takes_local_paths_as_strings_and_refuses_urls(run):
    from packer.core.errors import ConfigError

    assert resolve(str(run)) == run / "shards" and len(ShardSet(str(run))) == len(ShardSet(run))
    with pytest.raises(ConfigError, match="ShardSet reads a local folder; open a URL with PackedShards"):
        ShardSet("s3://bucket/run")
