"""Shared fixtures: small data and tokenizers made in the test, never downloaded."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from packer.build.load_tokenizer import TokenizerInfo, load_tokenizer

# Verified-markers go to a cache of the test session's own, never the user's.
os.environ["PACKER_CACHE"] = tempfile.mkdtemp(prefix="packer-test-cache-")

SHARED = Path(os.environ.get("PACKER_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def write_jsonl(path: Path, records: list, raw_lines: dict[int, bytes] | None = None) -> Path:
    """Write records as JSON Lines; raw_lines replaces line i (0-based) with the given bytes."""
    with open(path, "wb") as f:
        for i, r in enumerate(records):
            f.write(raw_lines[i] if raw_lines and i in raw_lines else json.dumps(r).encode() + b"\n")
    return path


@pytest.fixture(scope="session")
def byte_tok() -> TokenizerInfo:
    return load_tokenizer("byte")


@pytest.fixture(scope="session")
def big_vocab_tok(tmp_path_factory) -> TokenizerInfo:
    """A word-level tokenizer with 70,000 ids: token ids above 65,535 need uint32 on disk."""
    words = [f"w{i}" for i in range(69_998)] + ["[UNK]", "</s>"]
    vocab = {w: 70_000 - 1 - i for i, w in enumerate(words)}  # common words get the biggest ids
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path_factory.mktemp("bigtok")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return load_tokenizer(str(folder))


def sft_records(n: int, seed: int = 0, long_every: int = 0) -> list[dict]:
    """Records with varied lengths; every `long_every`-th has a long response."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        q = " ".join(rng.choice(["how", "many", "apples", "ü", "中", "x"]) for _ in range(rng.randint(1, 30)))
        r = " ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(1, 60)))
        if long_every and i % long_every == 0:
            r = r + " long" * 200
        out.append({"query": f"q{i}: {q}", "response": f"a{i}: {r}"})
    return out


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
    fs.exists("data") or fs.mkdir("data")  # moto keeps buckets across servers in one process
    yield fs
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
