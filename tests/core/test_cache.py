"""`packer cache`: what the user's cache holds, and pruning entries not used lately, never one being built."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
from click.testing import CliRunner

from conftest import sft_records, write_jsonl
from packer.core.cache import entries, prune
from packer.cli import main


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("PACKER_CACHE", str(root))
    return root


def _entry(root, kind, name, days_ago, size=100):
    path = root / kind / name
    if kind == "verified":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    else:
        (path / "shards").mkdir(parents=True)
        (path / "shards" / "a.bin").write_bytes(b"x" * size)
    when = time.time() - days_ago * 86400
    for p in [*path.rglob("*"), path]:
        os.utime(p, (when, when))
    return path


def test_prune_removes_what_was_not_used_lately_and_never_a_run_being_built(cache):
    old_staging = _entry(cache, "staging", "s1", 10)
    recent_run = _entry(cache, "runs", "r1", 0.1)
    old_marker = _entry(cache, "verified", "v1", 30, size=10)
    building = _entry(cache, "files", "f1", 10)
    (cache / "files" / "f1.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                          "started": time.time()}))
    dead = _entry(cache, "files", "f2", 10)
    (cache / "files" / "f2.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 17,
                                                          "started": 0}))
    assert {e.path.name: e.bytes for e in entries()} == {"s1": 100, "r1": 100, "f1": 100, "f2": 100, "v1": 10}

    removed, busy = prune(7, dry_run=True)
    assert sorted(e.path.name for e in removed) == ["f2", "s1", "v1"] and [e.path.name for e in busy] == ["f1"]
    assert old_staging.exists() and old_marker.exists() and dead.exists()

    removed, busy = prune(7)
    assert sorted(e.path.name for e in removed) == ["f2", "s1", "v1"]
    assert not old_staging.exists() and not old_marker.exists() and not dead.exists()
    assert recent_run.exists() and building.exists()
    assert not [p for p in cache.rglob(".*pruning*")], "nothing half-removed is left behind"

    assert [e.path.name for e in prune(0, ("runs",))[0]] == ["r1"]
    with pytest.raises(ValueError, match="unknown cache kind"):
        prune(0, ("shards",))


def test_cli_info_and_prune(cache):
    _entry(cache, "staging", "s1", 10, size=3 * 2**20)
    _entry(cache, "runs", "r1", 0)
    runner = CliRunner()
    info = runner.invoke(main, ["cache", "info"])
    assert info.exit_code == 0 and str(cache) in info.output
    assert "staging       1 entries" in info.output and "3.0 MiB" in info.output
    dry = runner.invoke(main, ["cache", "prune", "--dry-run"])
    assert dry.exit_code == 0 and "would remove staging/s1" in dry.output and (cache / "staging" / "s1").exists()
    done = runner.invoke(main, ["cache", "prune", "--older-than", "1"])
    assert done.exit_code == 0 and "removed staging/s1" in done.output and "freed 3.0 MiB (1 entries)" in done.output
    assert not (cache / "staging" / "s1").exists() and (cache / "runs" / "r1").exists()
    bad = runner.invoke(main, ["cache", "prune", "--older-than", "-1"])
    assert bad.exit_code != 0 and "older-than" in bad.output


def test_packed_dataset_from_files_lives_in_the_cache_and_comes_back_after_a_prune(cache, tmp_path, byte_tok):
    from packer.from_files import packed_dataset_from_files

    data = write_jsonl(tmp_path / "d.jsonl", sft_records(20))
    first = packed_dataset_from_files([str(data)], byte_tok, 256)
    assert first.path.parent.parent == cache / "files"
    kinds = {e.kind for e in entries()}
    assert kinds == {"files", "verified"}
    run = first.path.parent
    for p in [*run.rglob("*"), run]:
        os.utime(p, (time.time() - 30 * 86400,) * 2)
    packed_dataset_from_files([str(data)], byte_tok, 256)  # a use, though nothing is rebuilt
    assert run.exists() and prune(7, ("files",)) == ([], []), "using a cached run marks it used"
    prune(0)
    assert entries() == []
    again = packed_dataset_from_files([str(data)], byte_tok, 256)
    assert [again[i]["input_ids"].tolist() for i in range(len(again))] == \
        [first[i]["input_ids"].tolist() for i in range(len(first))]
