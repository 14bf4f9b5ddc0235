"""Is reading from an object store close to reading local disk? (goal: s3:// within 1.5x of local)

The same Parquet file and the same .jsonl.gz file are tokenized from local disk and from s3:// on a
local S3-compatible server (moto in server mode, started here: real HTTP requests through s3fs, ranged
GETs of 8 MB). Each row is the best of 3; ratios are against the local run of the same file, measured
in the same process. GSM8K with GPT-2 when ../shared/data has them, else the built-in sample.

    python benchmarks/bench_sources.py
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from packer.core import config as C
from packer.build.tokenize import tokenize
from packer.build.load_tokenizer import load_tokenizer

from bench_tokenize import best_of  # the same best-of-n timing (this script's folder is on sys.path)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REPEAT = 2


def main() -> None:
    from moto.server import ThreadedMotoServer
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("bench")
    tmp = Path(tempfile.mkdtemp())
    gsm, gpt2 = SHARED / "gsm8k" / "train.jsonl", SHARED / "gpt2"
    if gsm.is_file() and gpt2.is_dir():
        records = [{"query": r["question"], "response": r["answer"]} for r in map(json.loads, gsm.read_text().splitlines())]
        info, name = load_tokenizer(str(gpt2)), "GSM8K train, GPT-2"
    else:
        import random

        from packer.build.demo_data import record

        rng = random.Random(0)
        records, info, name = [record(rng) for _ in range(5000)], load_tokenizer("byte"), "built-in sample, byte"
    records = records * REPEAT
    pq.write_table(pa.Table.from_pylist(records), tmp / "d.parquet", row_group_size=8192)
    with gzip.open(tmp / "d.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    for f in ("d.parquet", "d.jsonl.gz"):
        fs.put(str(tmp / f), f"bench/{f}")

    def stage(path: str):
        def run() -> None:
            shutil.rmtree(tmp / "tok", ignore_errors=True)
            tokenize([path], tmp / "tok", C.TokenizeConfig(), tokenizer=info)
        return run

    print(f"\n## tokenize stage, local disk vs s3:// (local moto server): {name}, {len(records):,} records")
    print(f"{'input':12} {'MB':>6} {'local s':>8} {'s3 s':>8} {'s3 / local':>11}")
    for f in ("d.parquet", "d.jsonl.gz"):
        local = best_of(stage(str(tmp / f)))
        remote = best_of(stage(f"s3://bench/{f}"))
        print(f"{f:12} {(tmp / f).stat().st_size / 1e6:6.1f} {local:8.2f} {remote:8.2f} {remote / local:11.2f}")
    print("goal: s3 / local <= 1.50")
    server.stop()
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
