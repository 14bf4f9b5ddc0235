"""Does the tokenize stage keep up with the raw `tokenizers` batch encoder? (goal: >= 80% of it, from
JSON Lines and from Parquet)

Both sides tokenize the same records: the baseline calls `encode_batch_fast` on the already rendered
texts (no JSON, no template, no loss mask, no Arrow); the stage does all of that from the JSONL file,
or from the same records in a Parquet file (row groups of 8,192 rows, the stage's chunk).
Uses GSM8K and GPT-2 from ../shared/data when present, else the built-in sample and byte tokenizer.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from packer.core import config as C
import pyarrow as pa
import pyarrow.parquet as pq

from packer.build import sources
from packer.build.templates import ALPACA
from packer.build.tokenize import tokenize
from packer.build.load_tokenizer import load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REPEAT = 4  # records x4 so each timing is well above timer noise


def best_of(fn, n=3) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    gsm, gpt2 = SHARED / "gsm8k" / "train.jsonl", SHARED / "gpt2"
    if gsm.is_file() and gpt2.is_dir():
        lines = gsm.read_text().splitlines()
        records = [{"query": r["question"], "response": r["answer"]} for r in map(json.loads, lines)]
        tok_spec, name = str(gpt2), "GSM8K train, GPT-2"
    else:
        from packer.build.demo_data import record
        import random

        rng = random.Random(0)
        records = [record(rng) for _ in range(5000)]
        tok_spec, name = "byte", "built-in sample, byte tokenizer"
    records = records * REPEAT
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    parquet = tmp / "data.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet, row_group_size=8192)
    info = load_tokenizer(tok_spec)
    tok = info.build()
    texts = [ALPACA.replace("{query}", r["query"]) + r["response"] for r in records]
    n_tokens = sum(len(e.ids) for e in tok.encode_batch_fast(texts, add_special_tokens=False))

    def raw() -> None:
        for i in range(0, len(texts), 8192):  # same batch size as the stage's chunks
            tok.encode_batch_fast(texts[i:i + 8192], add_special_tokens=False)

    def raw_ids() -> None:  # ... and taking the ids out, which any caller of the encoder must do
        for i in range(0, len(texts), 8192):
            [e.ids for e in tok.encode_batch_fast(texts[i:i + 8192], add_special_tokens=False)]

    def raw_default() -> None:  # the default batch API (computes offsets too) and the ids
        for i in range(0, len(texts), 8192):
            [e.ids for e in tok.encode_batch(texts[i:i + 8192], add_special_tokens=False)]

    spans = [ALPACA.replace("{query}", r["query"]) for r in records] + [r["response"] for r in records]

    def raw_spans() -> None:  # what the stage itself encodes: prompt and response apart
        for i in range(0, len(spans), 16384):
            tok.encode_batch_fast(spans[i:i + 16384], add_special_tokens=False)

    def stage(workers: int, path: Path = data):
        def run() -> None:
            out = tmp / f"tok{workers}"
            shutil.rmtree(out, ignore_errors=True)
            tokenize([C.InputSpec(str(path))], out, C.TokenizeConfig(), tokenizer=info, workers=workers)
        return run

    def read_only() -> None:
        for chunk in sources.scan([str(data)], 8192, [sources.Columns()]):
            [json.loads(x) for x in chunk.payload[0]]

    def read_parquet() -> None:
        cols = sources.Columns(required=("query", "response"))
        for chunk in sources.scan([str(parquet)], 8192, [cols]):
            list(sources.read(chunk, cols))

    rows = [("raw encode_batch_fast (baseline)", best_of(raw)),
            ("raw encode_batch_fast + .ids", best_of(raw_ids)),
            ("raw encode_batch + .ids", best_of(raw_default)),
            ("raw, prompt and response apart", best_of(raw_spans)),
            ("read + json.loads only", best_of(read_only)),
            ("read Parquet rows only", best_of(read_parquet)),
            ("tokenize stage, Parquet, workers=0", best_of(stage(0, parquet))),
            ("tokenize stage, workers=2", best_of(stage(2), 2)),
            ("tokenize stage, workers=0", best_of(stage(0)))]
    base = rows[0][1]
    print(f"\n## tokenize stage vs raw encoder: {name}, {len(records):,} records, {n_tokens:,} tokens")
    stage0 = rows[-1][1]
    print(f"{'what':36} {'seconds':>8} {'Mtok/s':>8} {'vs raw':>7} {'stage(w=0) vs this':>19}")
    for what, sec in rows:
        print(f"{what:36} {sec:8.3f} {n_tokens / sec / 1e6:8.2f} {base / sec:7.2f} {sec / stage0:19.2f}")
    print("goal: 'vs raw' >= 0.80 for the stage rows (JSON Lines and Parquet), workers=0")
    shutil.rmtree(tmp)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
