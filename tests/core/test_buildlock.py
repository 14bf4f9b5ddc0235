"""One builder per run, the others waiting on the commit file outside any collective: real processes,
a misconfiguration where every process thinks it is rank 0, a dead builder's stale lock, timeouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from packer.core.buildlock import build_once
from packer.core.errors import PackerError

from conftest import sft_records, write_jsonl

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from packer.core.buildlock import build_once
    run = Path(sys.argv[1])
    def build():
        with open(run.parent / "builds.log", "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(1.5)
        run.mkdir()
        (run / "done").write_text("ok")
    print(build_once(run, build, lambda: (run / "done").is_file(), timeout=60, poll=0.05))
""")


def _spawn(tmp_path: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "run")], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("local_ranks", [[0, 1, 2, 3], [0, 0, 0, 0]], ids=["torchrun", "every-process-rank-0"])
def test_one_build_whatever_the_ranks_say(tmp_path, local_ranks):
    procs = [_spawn(tmp_path, {"LOCAL_RANK": str(r)}) for r in local_ranks]
    outs = [p.communicate(timeout=120)[0].split()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len((tmp_path / "builds.log").read_text().split()) == 1, "exactly one process built"
    assert outs.count("built") == 1 and set(outs) <= {"built", "waited", "ready"}
    assert not (tmp_path / "run.lock").exists(), "the lock is released"


def test_a_dead_builders_lock_is_broken_and_the_run_built(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (tmp_path / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": 0}))
    lines: list[str] = []
    run = tmp_path / "run"
    result = build_once(run, lambda: run.mkdir(), run.is_dir, builder=True, timeout=10, poll=0.01, log=lines.append)
    assert result == "built" and run.is_dir()
    assert "removed the stale lock" in lines[0]


def test_waiters_time_out_with_the_builder_named_and_say_they_wait(tmp_path, monkeypatch):
    import packer.core.buildlock as B

    monkeypatch.setattr(B, "PROGRESS", 0.05)
    lines: list[str] = []
    with pytest.raises(PackerError, match=r"run: not committed after 0 s waiting; builder: no builder \(no lock file\)"):
        build_once(tmp_path / "run", lambda: None, lambda: False, builder=False, timeout=0.3, poll=0.01,
                   log=lines.append)
    assert lines and "waiting" in lines[0]
    (tmp_path / "run.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0}))
    with pytest.raises(PackerError, match="builder: elsewhere:1"):
        build_once(tmp_path / "run", lambda: None, lambda: False, builder=False, timeout=0.2, poll=0.01,
                   log=lines.append)


def test_a_failed_build_releases_the_lock(tmp_path):
    def fail():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_once(tmp_path / "run", fail, lambda: False, builder=True, timeout=5, poll=0.01)
    assert not (tmp_path / "run.lock").exists()


def test_packed_dataset_from_files_across_processes(tmp_path):
    """Three processes of one node (LOCAL_RANK 0..2) with no process group: one packs, all read the same."""
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(300))
    code = textwrap.dedent(f"""
        from packer import packed_dataset_from_files
        ds = packed_dataset_from_files([{str(data)!r}], "byte", 512, cache_dir={str(tmp_path / 'cache')!r})
        print(len(ds), int(ds[0]["input_ids"].sum()))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "LOCAL_RANK": str(r), "RANK": str(r), "WORLD_SIZE": "3"})
             for r in range(3)]
    outs = [p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs) and len(set(outs)) == 1
    runs = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(runs) == 1 and not list((tmp_path / "cache").glob("*.lock"))


# One writer per run folder: every command that writes a run holds its lock for the whole write.

def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    import threading

    from packer.core.buildlock import writing
    from packer.core.errors import ConfigError

    run = tmp_path / "run"
    held, release = threading.Event(), threading.Event()

    def first():
        with writing(run, "packer pack"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    held.wait(10)
    try:
        with pytest.raises(ConfigError, match=r"is being written by packer pack \(pid \d+ on .*, since 20\d\d-"):
            with writing(run, "packer plan"):
                pass
    finally:
        release.set()
        t.join()
    with writing(run, "packer plan"):  # free again; and re-entrant within one thread
        with writing(run, "packer report"):
            pass
    assert not (tmp_path / "run.lock").exists()


def test_a_dead_writers_lock_is_broken(tmp_path):
    import socket

    from packer.core.buildlock import writing

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": 0}))
    with writing(tmp_path / "run", "packer pack"):
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()


PACK = textwrap.dedent("""
    import sys
    from packer.cli import main
    sys.argv = ["packer", "pack", sys.argv[1], "--out", sys.argv[2], "--pack-len", sys.argv[3], "--quiet",
                "--algorithm", "bfd"]
    main()
""")


def test_two_packs_into_one_out_never_mix(tmp_path):
    """Before: two `packer pack` into one --out at once (different --pack-len) both exited 0 in 6 of 10
    trials with a report of 2048-token packs beside shards of 1024-token packs. Now the second is refused
    while the first writes, and whatever finishes, the report describes the shards beside it."""
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(3000, seed=2, long_every=40))
    for trial in range(3):
        out = tmp_path / f"out{trial}"
        procs = [subprocess.Popen([sys.executable, "-c", PACK, str(data), str(out), n], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for n in ("1024", "2048")]
        results = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
        assert any(rc == 0 for rc, _ in results), results
        for rc, text in results:
            assert rc == 0 or (rc == 1 and "is being written by packer pack" in text), text
        report = json.loads((out / "report.json").read_text())
        shards = json.loads((out / "shards" / "manifest.json").read_text())
        assert report["pack_len"] == shards["pack_len"] == json.loads((out / "plan" / "manifest.json").read_text())[
            "config"]["pack_len"]


def test_temporaries_of_a_killed_run_are_removed(tmp_path, byte_tok):
    from packer.core import config as C
    from packer.pipeline import pack

    data = write_jsonl(tmp_path / "d.jsonl", sft_records(20, seed=1))
    run = tmp_path / "run"
    (run / ".tokenized.tmp-4194305").mkdir(parents=True)  # what a killed pack leaves
    (run / ".tokenized.tmp-4194305" / "chunk-00000.arrow").write_bytes(b"half")
    (run / ".shards.old-4194306").mkdir()
    pack([str(data)], run, tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=256, algorithm="bfd"))
    assert sorted(p.name for p in run.iterdir()) == ["plan", "report.html", "report.json", "report.md", "shards",
                                                     "tokenized"]
