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

from packer import config as C
from packer.errors import InputError
from packer.pipeline import pack
from packer.storage import expand, hf_parts, identity
from packer.tokenization import tokenize

from conftest import sft_records, write_jsonl

pytestmark = pytest.mark.slow
PLAN = C.PlanConfig(pack_len=512)


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free localhost port, the AWS variables pointing at it, and an fsspec handle."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("data")
    yield fs
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


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
