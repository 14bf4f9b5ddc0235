"""Remote inputs for real: a local S3-compatible server (moto in server mode, started here) serves
Parquet and compressed JSON Lines, read through s3fs exactly as a bucket would be; plus hf:// path
handling (the Hub cannot be reached from here, so only its parsing and its offline error are tested)."""

from __future__ import annotations

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from packer.core import config as C
from packer.core.errors import InputError
from packer.pipeline import pack
from packer.core.storage import expand, hf_parts, identity
from packer.build.tokenize import tokenize

from conftest import sft_records, write_jsonl

pytestmark = pytest.mark.slow
PLAN = C.PlanConfig(pack_len=512)


def hashes(run):
    return sorted(json.loads((run / "shards" / "manifest.json").read_text())["files"].items())


def test_s3_parquet_and_jsonl_gz_give_the_local_shards(s3, tmp_path):
    records = sft_records(400, seed=4, long_every=30)
    for i in range(2):
        pq.write_table(pa.Table.from_pylist(records[i * 200:(i + 1) * 200]), tmp_path / f"p{i}.parquet",
                       row_group_size=64)
        s3.put(str(tmp_path / f"p{i}.parquet"), f"data/parquet/p{i}.parquet")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    s3.put(str(tmp_path / "d.jsonl.gz"), "data/d.jsonl.gz")
    local = write_jsonl(tmp_path / "d.jsonl", records)
    pack([str(local)], tmp_path / "local", plan_config=PLAN)
    pack(["s3://data/parquet/*.parquet"], tmp_path / "s3pq", plan_config=PLAN, workers=2)
    pack(["s3://data/d.jsonl.gz"], tmp_path / "s3gz", plan_config=PLAN)
    assert hashes(tmp_path / "s3pq") == hashes(tmp_path / "local") == hashes(tmp_path / "s3gz")
    m = json.loads((tmp_path / "s3pq" / "tokenized" / "manifest.json").read_text())
    assert [i["path"] for i in m["inputs"]] == ["s3://data/parquet/p0.parquet", "s3://data/parquet/p1.parquet"]
    assert all(len(i["etag"]) == 32 and i["size"] > 0 for i in m["inputs"]), "the object's ETag is its identity"


def test_a_changed_object_is_read_again(s3, tmp_path, byte_tok):
    pq.write_table(pa.table({"query": ["a", "b"], "response": ["x", "y"]}), tmp_path / "v1.parquet")
    pq.write_table(pa.table({"query": ["a", "b", "c"], "response": ["x", "y", "z"]}), tmp_path / "v2.parquet")
    s3.put(str(tmp_path / "v1.parquet"), "data/v.parquet")
    a = tokenize(["s3://data/v.parquet"], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)
    assert tokenize(["s3://data/v.parquet"], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok) == a
    s3.put(str(tmp_path / "v2.parquet"), "data/v.parquet")
    b = tokenize(["s3://data/v.parquet"], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)
    assert b["digest"] != a["digest"] and b["counts"]["records"] == 3


def test_missing_objects_and_buckets_fail_before_any_work(s3, tmp_path, byte_tok):
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    with pytest.raises(InputError, match=rf"s3://data/nope\.parquet: not found \(tried endpoint {endpoint}"):
        tokenize(["s3://data/nope.parquet"], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)
    with pytest.raises(InputError, match=r"s3://no-bucket/\*\.parquet: (not found|unreachable)"):
        tokenize(["s3://no-bucket/*.parquet"], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)
    with pytest.raises(InputError, match=r"s3://data/none-\*\.parquet: matches no files"):
        tokenize(["s3://data/none-*.parquet"], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)
    assert not (tmp_path / "tok").exists()


def test_an_unreachable_endpoint_names_what_was_tried(s3, tmp_path, monkeypatch):
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(InputError, match=r"s3://data/x\.parquet: unreachable \(tried endpoint http://127\.0\.0\.1:9 "
                                             r"with credentials from AWS_ACCESS_KEY_ID\)"):
            identity("s3://data/x.parquet")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_hf_urls_parse_and_fail_offline_with_what_was_tried(monkeypatch):
    assert hf_parts("hf://datasets/openai/gsm8k@refs%2Fconvert%2Fparquet/main/train-0.parquet") == {
        "repo_type": "dataset", "repo_id": "openai/gsm8k", "revision": "refs/convert/parquet",
        "path": "main/train-0.parquet"}
    assert hf_parts("hf://org/model/config.json") == {"repo_type": "model", "repo_id": "org/model",
                                                      "revision": "main", "path": "config.json"}
    with pytest.raises(InputError, match="is not an hf:// URL"):
        hf_parts("hf://only-one-part")
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=r"hf://datasets/org/name/\*\.parquet: unreachable \(tried the Hugging Face "
                                         r"Hub, HF_HUB_OFFLINE is set\).*private or gated datasets need HF_TOKEN"):
        expand("hf://datasets/org/name/*.parquet")


def test_a_store_without_its_package_says_what_to_install():
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match=r"gs://b/x\.parquet: cannot open gs:// URLs .*; pip install gcsfs"):
            expand("gs://b/x.parquet")
    else:
        pytest.skip("gcsfs is installed")


# Run folders on the object store: --out s3://... commits with its manifest; readers fetch into the cache.

def _packs(ds):
    return [(ds[i]["input_ids"].tolist(), ds[i]["labels"].tolist()) for i in range(len(ds))]


def test_out_s3_commits_a_run_that_packedshards_and_the_loader_open(s3, tmp_path, monkeypatch):
    from packer.train.reader import PackedShards
    from packer.train.loader import PackedLoader

    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "cache"))
    s3.exists("runs") or s3.mkdir("runs")
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(300, seed=8, long_every=30))
    wcfg = C.WriteConfig(shard_bytes=32 << 10)
    pack([str(data)], tmp_path / "local", plan_config=PLAN, write_config=wcfg)
    pack([str(data)], "s3://runs/r1", plan_config=PLAN, write_config=wcfg)
    committed = json.loads(s3.cat_file("runs/r1/shards/manifest.json"))
    assert sorted(committed["files"].items()) == hashes(tmp_path / "local"), "the same shards, committed"
    assert s3.exists("runs/r1/report.json")
    remote, local = PackedShards("s3://runs/r1"), PackedShards(tmp_path / "local")
    assert str(remote.path).startswith(str(tmp_path / "cache")) and _packs(remote) == _packs(local)
    batches = lambda p: [b["input_ids"].tolist() for b in PackedLoader(p, 2, seed=1)]
    assert batches("s3://runs/r1") == batches(tmp_path / "local")


def test_a_run_interrupted_before_its_manifest_is_invisible(s3, tmp_path, monkeypatch):
    """Uploads that stop before the commit leave no run: not a new one, and not half of an older one."""
    from packer.core import runstore
    from packer.train.reader import PackedShards
    from packer.core.errors import FormatError

    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "cache"))
    s3.exists("runs") or s3.mkdir("runs")
    a = write_jsonl(tmp_path / "a.jsonl", sft_records(200, seed=1))
    b = write_jsonl(tmp_path / "b.jsonl", sft_records(260, seed=2))
    pack([str(a)], "s3://runs/r2", plan_config=PLAN)
    assert len(PackedShards("s3://runs/r2")) > 0
    real = runstore.filesystem

    class DiesBeforeCommit:  # the store as seen by a process that is killed just before the commit
        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, name):
            return getattr(self.fs, name)

        def put_file(self, lpath, rpath, *args, **kw):
            if str(rpath).endswith("shards/manifest.json"):
                raise KeyboardInterrupt
            return self.fs.put_file(lpath, rpath, *args, **kw)

    monkeypatch.setattr(runstore, "filesystem", lambda url: (DiesBeforeCommit(real(url)[0]), real(url)[1]))
    with pytest.raises(KeyboardInterrupt):
        pack([str(b)], "s3://runs/r2", plan_config=PLAN)
    monkeypatch.setattr(runstore, "filesystem", real)
    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "cache2"))  # a reader with nothing cached
    with pytest.raises(FormatError, match="holds no committed run"):
        PackedShards("s3://runs/r2")
    pack([str(b)], "s3://runs/r2", plan_config=PLAN)  # the rerun commits, and drops the older shards
    names = {p.rsplit("/", 1)[-1] for p in s3.ls("runs/r2/shards", detail=False)}
    assert names == set(json.loads(s3.cat_file("runs/r2/shards/manifest.json"))["files"]) | {"manifest.json"}
    assert runstore.fetch("s3://runs/r2").is_dir()


def test_a_damaged_or_hostile_remote_run_is_refused(s3, tmp_path, monkeypatch):
    from packer.train.reader import PackedShards
    from packer.core.errors import FormatError

    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "cache"))
    s3.exists("runs") or s3.mkdir("runs")
    pack([str(write_jsonl(tmp_path / "a.jsonl", sft_records(120, seed=3)))], "s3://runs/r3", plan_config=PLAN)
    manifest = json.loads(s3.cat_file("runs/r3/shards/manifest.json"))
    name = manifest["shards"][0]["file"]
    body = bytearray(s3.cat_file(f"runs/r3/shards/{name}"))
    good = bytes(body)
    body[-1] ^= 1  # the last pack's last loss-mask byte
    s3.pipe_file(f"runs/r3/shards/{name}", bytes(body))
    ds = PackedShards("s3://runs/r3")  # the heads are intact: it opens, and reads every pack but the last
    ds[0]
    with pytest.raises(FormatError, match=rf"s3://runs/r3/shards/{name}: pack {len(ds) - 1} .*its loss mask\) fails "
                       "its checksum after a second fetch"):
        ds[len(ds) - 1]
    s3.pipe_file(f"runs/r3/shards/{name}", good)
    heads = s3.cat_file("runs/r3/shards/heads.bin")  # where a streaming reader gets every shard's head
    body = bytearray(heads)
    body[70] ^= 1  # a byte of the first shard's head
    s3.pipe_file("runs/r3/shards/heads.bin", bytes(body))
    with pytest.raises(FormatError, match=f"heads.bin: the head .* of {name} there differs from the run's manifest"):
        PackedShards("s3://runs/r3")
    s3.pipe_file("runs/r3/shards/heads.bin", heads)
    manifest["files"]["../escape"] = manifest["files"].pop(name)
    s3.pipe_file("runs/r3/shards/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(FormatError, match="not a plain file name"):
        PackedShards("s3://runs/r3")


class _Interrupted(Exception):
    pass


def test_a_publish_interrupted_after_any_object_shows_the_old_run_or_nothing(s3, tmp_path, monkeypatch):
    """Interrupt the publish of a new run after each object it writes, one trial per object: a reader with
    an empty cache then sees the old run complete, the new run complete, or no committed run, never a
    committed manifest whose files are missing or another run's (the commit point is the manifest, last)."""
    from packer.core import runstore
    from packer.core.errors import FormatError
    from packer.train.reader import PackedShards

    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "cache"))
    s3.exists("runs") or s3.mkdir("runs")
    a = write_jsonl(tmp_path / "a.jsonl", sft_records(200, seed=1))
    b = write_jsonl(tmp_path / "b.jsonl", sft_records(260, seed=2))
    wcfg = C.WriteConfig(shard_bytes=32 << 10)  # several shards
    old, new = (_packs(PackedShards(pack_local)) for pack_local in (
        _local(tmp_path / "la", a, wcfg), _local(tmp_path / "lb", b, wcfg)))
    pack([str(a)], "s3://runs/r4", plan_config=PLAN, write_config=wcfg)
    real = runstore.filesystem
    writes = {"left": 0}

    class Interrupting:  # the store as seen by a publisher that dies after `left` more writes
        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, name):
            attr = getattr(self.fs, name)
            if name not in ("put_file", "pipe_file", "rm_file", "rm", "put", "pipe"):
                return attr

            def write(*args, **kw):
                if writes["left"] == 0:
                    raise _Interrupted
                writes["left"] -= 1
                return attr(*args, **kw)
            return write

    monkeypatch.setattr(runstore, "filesystem", lambda url: (Interrupting(real(url)[0]), real(url)[1]))
    seen = set()
    for k in range(100):
        writes["left"] = k
        try:
            pack([str(b)], "s3://runs/r4", plan_config=PLAN, write_config=wcfg)
            break  # k writes were enough: the publish completed
        except _Interrupted:
            pass
        finally:
            if s3.exists(f"runs/r4/{runstore.LOCK}"):
                s3.rm_file(f"runs/r4/{runstore.LOCK}")  # the dead publisher's lock, expired
        monkeypatch.setenv("PACKER_CACHE", str(tmp_path / f"reader{k}"))  # a reader with nothing cached
        monkeypatch.setattr(runstore, "filesystem", real)
        try:
            got = _packs(PackedShards("s3://runs/r4"))
            assert got in (old, new), f"interrupted after {k} writes: a run that is neither the old nor the new"
            seen.add("old" if got == old else "new")
        except FormatError as e:
            assert "holds no committed run" in str(e), f"interrupted after {k} writes: {e}"
            seen.add("none")
        monkeypatch.setattr(runstore, "filesystem", lambda url: (Interrupting(real(url)[0]), real(url)[1]))
        monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "cache"))
    else:
        pytest.fail("the publish never completed")
    assert k > 5 and seen >= {"old", "none"}
    monkeypatch.setattr(runstore, "filesystem", real)
    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "final"))
    assert _packs(PackedShards("s3://runs/r4")) == new


def _local(out, data, wcfg):
    pack([str(data)], out, plan_config=PLAN, write_config=wcfg)
    return out


def test_one_publisher_per_url_and_prune_leaves_a_build_alone(s3, tmp_path, monkeypatch):
    """Before: two publishers to one URL committed one run's shards with the other's report; `packer cache
    prune` during an --out s3:// build deleted its staging folder mid-build."""
    import socket

    from packer import pipeline
    from packer.core import cache, runstore
    from packer.core.errors import ConfigError

    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "cache"))
    s3.exists("runs") or s3.mkdir("runs")
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(100, seed=6))
    with runstore.publishing("s3://runs/r5", "packer pack"):
        with pytest.raises(ConfigError, match=r"s3://runs/r5 is being published by packer pack \(pid \d+ on "):
            pack([str(data)], "s3://runs/r5", plan_config=PLAN)
    assert not s3.exists(f"runs/r5/{runstore.LOCK}"), "released"
    # a lock left by a publisher killed on this host is taken at once
    dead = {"host": socket.gethostname(), "pid": 2**22 + 7, "started": 0, "command": "packer pack"}
    s3.pipe_file(f"runs/r5/{runstore.LOCK}", json.dumps(dead).encode())
    real_publish, pruned = pipeline.publish, []

    def prune_then_publish(run, url):  # `packer cache prune --older-than 0` while the build holds its staging
        pruned.append(cache.prune(0.0))
        assert run.is_dir(), "prune removed the staging folder of a live build"
        real_publish(run, url)

    monkeypatch.setattr(pipeline, "publish", prune_then_publish)
    pack([str(data)], "s3://runs/r5", plan_config=PLAN)
    removed, busy = pruned[0]
    assert [e.kind for e in busy] == ["staging"] and not [e for e in removed if e.kind == "staging"]
    assert s3.exists("runs/r5/shards/manifest.json") and not s3.exists(f"runs/r5/{runstore.LOCK}")
