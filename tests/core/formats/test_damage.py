"""A damaged or edited run folder gives a FormatError or exactly the packed data: never a crash, never
quietly different data. Every case opens the run in a subprocess (DECISIONS: a crash fails one test,
not the suite) with every reader: PackedShards (default and verify=False), PackedLoader with 0 and 2
workers, and rank 1 of 2."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from packer.core import config as C
from packer.core.formats import shards as fmt
from packer.core.manifest import seal
from packer.pipeline import pack

from conftest import sft_records, write_jsonl

PACK_LEN = 512
READERS = textwrap.dedent('''
    import json, sys, traceback
    import torch
    from packer import PackedLoader, PackedShards
    from packer.core.errors import PackerError
    run, want = sys.argv[1], json.load(open(sys.argv[2]))
    def shards(**kw):
        ds = PackedShards(run, **kw)
        return [ds[i]["input_ids"].tolist() for i in range(len(ds))]
    def loader(**kw):
        out = {}
        ld = PackedLoader(run, 2, shuffle=False, flatten=True, drop_last=False, **kw)
        for b in ld:
            cu = b["cu_seqlens"].tolist()
            ids = b["input_ids"][0].tolist()
            out.setdefault("batches", []).append(ids)
        return out.get("batches", [])
    readers = {
        "PackedShards": lambda: shards(),
        "PackedShards(verify=False)": lambda: shards(verify=False),
        "PackedLoader": lambda: loader(),
        "PackedLoader(num_workers=2)": lambda: loader(num_workers=2),
        "PackedLoader(rank=1)": lambda: loader(rank=1, world_size=2),
        "PackedLoader(rank=1, verify=False)": lambda: loader(rank=1, world_size=2, verify=False),
    }
    result = {}
    for name, read in readers.items():
        try:
            got = read()
            result[name] = "same" if got == want[name] else "DIFFERENT"
        except PackerError as e:
            result[name] = "error: " + str(e)
        except Exception as e:
            result[name] = "RAW " + type(e).__name__ + ": " + str(e)
    print(json.dumps(result))
''')


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, byte_tok):
    """A small run in 3 shards and what each reader gives on it."""
    base = tmp_path_factory.mktemp("damage")
    data = write_jsonl(base / "d.jsonl", sft_records(60))
    pack([str(data)], base / "run", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=PACK_LEN),
         write_config=C.WriteConfig(shard_bytes=16384))
    assert len(list((base / "run" / "shards").glob("shard-*.bin"))) >= 3
    (base / "readers.py").write_text(READERS)
    want = _read(base, base / "run", None)
    return base, want


def _read(base: Path, run: Path, want: dict | None) -> dict:
    want_file = base / "want.json"
    if want is None:  # record what every reader gives on the intact run
        script = READERS.replace('got == want[name]', 'True').replace(
            'result[name] = "same" if True else "DIFFERENT"', 'result[name] = got')
        (base / "record.py").write_text(script)
        want_file.write_text(json.dumps({}))
        proc = subprocess.run([sys.executable, str(base / "record.py"), str(run), str(want_file)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = json.loads(proc.stdout.splitlines()[-1])
        want_file.write_text(json.dumps(got))
        return got
    proc = subprocess.run([sys.executable, str(base / "readers.py"), str(run), str(want_file)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the reader process died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.splitlines()[-1])


def _manifest(run: Path) -> dict:
    return json.loads((run / "shards" / "manifest.json").read_text())


def _write_manifest(run: Path, m: dict, reseal: bool) -> None:
    if reseal:  # an editor who also recomputes the seal: the structural checks must still catch it
        m["manifest_sha256"] = seal(m)
    (run / "shards" / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True))


def _edit_array(run: Path, shard: int, name: str, index: int, value) -> None:
    path = run / "shards" / f"shard-{shard:05d}.bin"
    sh = fmt.open_shard(path)
    _, _, _, code = None, None, None, None
    raw = bytearray(path.read_bytes())
    header = fmt.HEADER.unpack(bytes(raw[:64]))
    for n, dt, count, off in fmt._layout(header[2], header[3], header[4], header[5]):
        if n == name:
            pos = off + (index % count) * dt.itemsize
            raw[pos:pos + dt.itemsize] = np.array([value], dtype=dt).tobytes()
    del sh
    path.write_bytes(bytes(raw))


def _edit_header(run: Path, shard: int, field: int, value) -> None:
    path = run / "shards" / f"shard-{shard:05d}.bin"
    raw = bytearray(path.read_bytes())
    fields = list(fmt.HEADER.unpack(bytes(raw[:64])))
    fields[field] = value
    raw[:64] = fmt.HEADER.pack(*fields)
    path.write_bytes(bytes(raw))


def _resize_files_entry(run: Path) -> None:
    """After editing shard bytes in place the sizes still match; keep the manifest as it is."""


CASES = {
    # manifest edits (as found by hand editing, with and without recomputing the seal)
    "pack_len 512 -> 40": lambda run: _write_manifest(run, {**_manifest(run), "pack_len": 40}, False),
    "pack_len 512 -> 40, resealed": lambda run: _write_manifest(run, {**_manifest(run), "pack_len": 40}, True),
    "pack_len 512 -> 4096, resealed": lambda run: _write_manifest(run, {**_manifest(run), "pack_len": 4096}, True),
    "vocab_size 257 -> 100, resealed": lambda run: _write_manifest(
        run, {**(m := _manifest(run)), "tokenizer": {**m["tokenizer"], "vocab_size": 100}}, True),
    "shard entry dropped, resealed": lambda run: _write_manifest(
        run, {**(m := _manifest(run)), "shards": m["shards"][:1] + m["shards"][2:]}, True),
    "shard entry listed twice, resealed": lambda run: _write_manifest(
        run, {**(m := _manifest(run)), "shards": m["shards"] + m["shards"][-1:]}, True),
    "shard entries swapped, resealed": lambda run: _write_manifest(
        run, {**(m := _manifest(run)), "shards": [m["shards"][1], m["shards"][0], *m["shards"][2:]]}, True),
    "counts.packs wrong, resealed": lambda run: _write_manifest(
        run, {**(m := _manifest(run)), "counts": {**m["counts"], "packs": m["counts"]["packs"] + 5}}, True),
    "file ../escape, resealed": lambda run: _write_manifest(
        run, {**(m := _manifest(run)), "shards": [{**m["shards"][0], "file": "../../d.jsonl"}, *m["shards"][1:]]},
        True),
    "file /dev/zero, resealed": lambda run: _write_manifest(
        run, {**(m := _manifest(run)), "shards": [{**m["shards"][0], "file": "/dev/zero"}, *m["shards"][1:]]}, True),
    "manifest not JSON": lambda run: (run / "shards" / "manifest.json").write_text("{\"format\": "),
    "manifest a list": lambda run: (run / "shards" / "manifest.json").write_text("[1, 2]"),
    "shard symlinked to /dev/zero": lambda run: ((run / "shards" / "shard-00001.bin").unlink(),
                                                 (run / "shards" / "shard-00001.bin").symlink_to("/dev/zero")),
    # shard arrays, one value each (same size: only the checksum and the structure can tell)
    "pack_segment_offsets +3": lambda run: _edit_array(run, 1, "pack_segment_offsets", 1,
                                                       fmt.open_shard(run / "shards" / "shard-00001.bin")
                                                       .pack_segment_offsets[1] + 3),
    "pack_token_offsets past the end": lambda run: _edit_array(run, 0, "pack_token_offsets", 2, 10**12),
    "pack_token_offsets negative": lambda run: _edit_array(run, 0, "pack_token_offsets", 1, -5),
    "segment_lengths 0": lambda run: _edit_array(run, 2, "segment_lengths", 0, 0),
    "segment_lengths huge": lambda run: _edit_array(run, 0, "segment_lengths", 1, 2**31 - 1),
    "segment_example negative": lambda run: _edit_array(run, 0, "segment_example", 0, -1),
    "segment_start negative": lambda run: _edit_array(run, 0, "segment_start", 0, -7),
    "token id past the vocabulary": lambda run: _edit_array(run, 1, "tokens", 3, 60000),
    "token id changed within the vocabulary": lambda run: _edit_array(
        run, 1, "tokens", 3, int(fmt.open_shard(run / "shards" / "shard-00001.bin").tokens[3]) % 200 + 40),
    "loss_mask byte 7": lambda run: _edit_array(run, 0, "loss_mask", 5, 7),
    # shard headers
    "header num_packs +1": lambda run: _edit_header(run, 0, 3, fmt.open_shard(run / "shards" / "shard-00000.bin")
                                                    .num_packs + 1),
    "header pack_len 40": lambda run: _edit_header(run, 0, 6, 40),
    "header version 9": lambda run: _edit_header(run, 0, 1, 9),
    "header dtype code 2": lambda run: _edit_header(run, 0, 2, 2),
    "shard truncated": lambda run: (run / "shards" / "shard-00002.bin").write_bytes(
        (run / "shards" / "shard-00002.bin").read_bytes()[:-17]),
    "shard missing": lambda run: (run / "shards" / "shard-00001.bin").unlink(),
    "shard empty": lambda run: (run / "shards" / "shard-00001.bin").write_bytes(b""),
}
# Damage only a checksum can see: readers that skip hashing give the data as it now is on disk.
CHECKSUM_ONLY = {"token id changed within the vocabulary"}
UNHASHED = {"PackedShards(verify=False)", "PackedLoader(rank=1, verify=False)"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damage_gives_a_clear_error_or_the_packed_data(case, good_run, tmp_path):
    base, want = good_run
    run = tmp_path / "run"
    shutil.copytree(base / "run", run, symlinks=True)
    CASES[case](run)
    got = _read(base, run, want)
    print(f"\nDAMAGE {case}: " + json.dumps(got))
    for reader, outcome in got.items():
        assert not outcome.startswith("RAW"), f"{case}: {reader} raised a raw error: {outcome}"
        if case in CHECKSUM_ONLY and reader in UNHASHED:
            # verify=False reads what is on disk (the one thing hashing is for); rank 1 may not read that pack
            assert outcome == "DIFFERENT" or "rank=1" in reader, f"{case}: {reader}: {outcome}"
            continue
        assert outcome.startswith("error: ") or outcome == "same", f"{case}: {reader}: {outcome}"
        if outcome != "same":
            assert "HINT" in outcome or "re-run" in outcome, f"{case}: {reader}: the error says what to do"
    assert any(o.startswith("error") for o in got.values()), f"{case}: no reader noticed anything: {got}"


def test_undamaged_run_reads_the_same_everywhere(good_run, tmp_path):
    base, want = good_run
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    assert set(_read(base, run, want).values()) == {"same"}


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_kill_9_anywhere_then_rerun_gives_byte_identical_shards(tmp_path):
    """SIGKILL at points spread over every stage of a run; each time the folder never shows a half-written
    stage, and the rerun completes with the same bytes as a run never interrupted."""
    import signal
    import time

    data = write_jsonl(tmp_path / "d.jsonl", sft_records(4000, long_every=7))
    cmd = [sys.executable, "-m", "packer.cli", "pack", str(data), "--tokenizer", "byte", "--pack-len", "512",
           "--shard-mb", "0.05", "--chunk-records", "500", "--quiet"]
    t = time.perf_counter()
    subprocess.run(cmd + ["--out", str(tmp_path / "clean")], check=True, capture_output=True)
    took = time.perf_counter() - t
    want = {s: _digests(tmp_path / "clean" / s) for s in ("tokenized", "plan", "shards")}
    assert len(want["shards"]) > 3
    for i, frac in enumerate((0.35, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97)):
        out = tmp_path / f"killed{i}"
        proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(took * frac)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for stage in ("tokenized", "plan", "shards"):  # a stage is either absent or complete
            if (out / stage).exists():
                assert _digests(out / stage) == want[stage], f"kill at {frac:.0%}: {stage} half-written"
        subprocess.run(cmd + ["--out", str(out)], check=True, capture_output=True)
        for stage in ("tokenized", "plan", "shards"):
            assert _digests(out / stage) == want[stage], f"kill at {frac:.0%}: rerun differs in {stage}"


def test_rerun_rebuilds_a_damaged_stage(tmp_path):
    """The hint of a damaged shard ("re-run packer pack --rehash") repairs it instead of looping."""
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(200))
    cmd = [sys.executable, "-m", "packer.cli", "pack", str(data), "--tokenizer", "byte", "--pack-len", "512",
           "--out", str(tmp_path / "r"), "--quiet"]
    subprocess.run(cmd, check=True, capture_output=True)
    want = _digests(tmp_path / "r" / "shards")
    shard = tmp_path / "r" / "shards" / "shard-00000.bin"
    raw = bytearray(shard.read_bytes())
    raw[300] ^= 0x55
    shard.write_bytes(bytes(raw))
    subprocess.run(cmd + ["--rehash"], check=True, capture_output=True)
    assert _digests(tmp_path / "r" / "shards") == want
    shard.write_bytes(bytes(raw[:-5]))  # a size change is noticed without --rehash
    subprocess.run(cmd, check=True, capture_output=True)
    assert _digests(tmp_path / "r" / "shards") == want


def test_shards_of_an_older_plan_are_never_served(tmp_path, byte_tok):
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(100))
    pack([str(data)], tmp_path / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=512))
    from packer.build.plan import plan_stage

    plan_stage(tmp_path / "r" / "tokenized", tmp_path / "r" / "plan", C.PlanConfig(pack_len=1024))  # no write
    from packer import PackedShards
    from packer.core.errors import FormatError

    with pytest.raises(FormatError, match="written from another plan stage.*re-run `packer pack`"):
        PackedShards(tmp_path / "r")


SERVER = textwrap.dedent('''
    import sys, numpy as np
    from packer import PackedShards
    from packer.train.collate import BatchSource, collate
    from packer.core.errors import PackerError
    for line in sys.stdin:
        run = line.strip()
        try:
            ds = PackedShards(run, verify=False)  # structure only: flipped token bytes read as they are
            bad = ""
            for i in range(len(ds)):
                it = ds[i]
                n, cu = len(it["input_ids"]), it["cu_seqlens"].tolist()
                if not (0 < n <= ds.pack_len and cu[0] == 0 and cu[-1] == n and int(it["input_ids"].max()) < ds.vocab_size
                        and all(a < b for a, b in zip(cu, cu[1:]))):
                    bad = bad or f"pack {i}: {n} tokens, cu_seqlens {cu[:3]}..{cu[-1]}"
            if bad:
                print("BAD", bad, flush=True)
                continue
            src = BatchSource.from_shards(ds.shards, ds.pack_len, vocab_size=ds.vocab_size)
            for a in range(0, len(ds), 3):
                collate(src, np.arange(a, min(a + 3, len(ds))))
                collate(src, np.arange(a, min(a + 3, len(ds))), flatten=True, label_mode="shifted")
            print("ok", flush=True)
        except PackerError as e:
            print("error", str(e).replace("\\\\n", " "), flush=True)
        except Exception as e:
            print("RAW", type(e).__name__, str(e).replace("\\\\n", " "), flush=True)
''')


@pytest.fixture(scope="module")
def reader_server(good_run):
    base, _ = good_run
    (base / "server.py").write_text(SERVER)
    proc = subprocess.Popen([sys.executable, str(base / "server.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    yield proc
    proc.stdin.close()
    proc.wait(timeout=30)


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=st.integers(0, 10), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255),
                                                           st.booleans()), min_size=1, max_size=4),
       truncate=st.one_of(st.none(), st.floats(0, 1, exclude_max=True)))
def test_fuzzed_run_never_crashes_the_reader(good_run, reader_server, tmp_path_factory, file, flips, truncate):
    base, _ = good_run
    run = tmp_path_factory.mktemp("fuzz") / "run"
    shutil.copytree(base / "run", run)
    files = sorted((run / "shards").iterdir())
    target = files[file % len(files)]
    raw = bytearray(target.read_bytes())
    meta = 64 + len(fmt.open_shard(target).tokens) * 3 if target.name.startswith("shard-") and len(raw) > 64 else 0
    for where, value, in_metadata in flips:  # half the flips land in the offsets and segment arrays
        lo = meta if in_metadata and meta < len(raw) else 0
        raw[lo + int(where * (len(raw) - lo))] = value
    if truncate is not None:
        raw = raw[:int(truncate * len(raw))]
    target.write_bytes(bytes(raw))
    reader_server.stdin.write(f"{run}\n")
    reader_server.stdin.flush()
    answer = reader_server.stdout.readline()
    assert answer, f"the reader process died (rc {reader_server.poll()}) on {target.name}"
    assert not answer.startswith(("RAW", "BAD")), f"{target.name}: {answer}"
    shutil.rmtree(run.parent)
