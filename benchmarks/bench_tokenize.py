"""Does the tokenize stage keep up with the fast encoder? (goal: >= 0.5 of its raw throughput, same cores)
And does the gate ever see a difference? (goal: zero mismatched ids, every span of every corpus here)

1. Throughput: both sides tokenize the same records. The baselines encode the already rendered texts (no
   JSON, no template, no loss mask, no Arrow): fastokens' encode_batch_flat and tokenizers'
   encode_batch_fast; the stage does all of that from the JSON Lines file (and from Parquet), with the
   default backend (fast, its gate on) and with tokenizers. Each stage run builds its encoders and runs the
   load-time gate (then releases them, as `packer pack` does): that setup is timed on its own and the last
   column takes it out, the stage's throughput. One more run skips the run-time gate's re-encoding (bench
   only): the difference is what the gate costs.
2. Proof: `--check-tokens all` (every span encoded by both backends and compared) over every real corpus in
   ../shared/data (GSM8K, Arena-Hard answers, the orca DPO chats, the chat templates' renderings) with
   every tokenizer there (GPT-2, Llama 3), kinds sft, text and chat: the mismatch count of each.
Uses ../shared/data (GSM8K and GPT-2), else the built-in sample and byte tokenizer for part 1.
Options: --repeat N (GSM8K xN in part 1, default 8), --no-proof (part 1 only).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from packer.build import encoders
from packer.build.load_tokenizer import load_tokenizer
from packer.build.templates import ALPACA
from packer.build.tokenize import tokenize
from packer.core import config as C

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REPEAT = 8  # GSM8K x8 (~60k records) so each timing is well above timer noise


def best_of(fn, n=3) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def throughput(tmp: Path) -> None:
    gsm, gpt2 = SHARED / "gsm8k" / "train.jsonl", SHARED / "gpt2"
    if gsm.is_file() and gpt2.is_dir():
        records = [{"query": r["question"], "response": r["answer"]} for r in map(json.loads, gsm.read_text().splitlines())]
        tok_spec, name = str(gpt2), f"GSM8K train x{REPEAT}, GPT-2"
    else:
        import random

        from packer.build.demo_data import record

        rng = random.Random(0)
        records = [record(rng) for _ in range(7000)]
        tok_spec, name = "byte", "built-in sample, byte tokenizer"
    records = records * REPEAT
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    parquet = tmp / "data.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet, row_group_size=8192)
    info = load_tokenizer(tok_spec)
    ref = encoders.load("tokenizers", info.json)
    texts = [ALPACA.replace("{query}", r["query"]) + r["response"] for r in records]
    n_tokens = int(ref.encode(texts)[1].sum())

    def raw(encoder):
        def run() -> None:
            for i in range(0, len(texts), 8192):  # the stage's batch size
                encoder.encode(texts[i:i + 8192])
        return run

    def stage(backend: str, path: Path = data, workers: int = 0, gate: bool = True):
        def run() -> None:
            out = tmp / f"tok-{backend}-{workers}"
            shutil.rmtree(out, ignore_errors=True)
            encoders.release()  # every run builds its encoders, as a `packer pack` does: 'setup out' takes that out
            check = encoders.check
            if not gate:
                encoders.check = lambda *args: None  # bench only: the run-time sample is not re-encoded
            try:
                tokenize([C.InputSpec(str(path))], out, C.TokenizeConfig(tokenizer_backend=backend), tokenizer=info,
                         workers=workers)
            finally:
                encoders.check = check
        return run

    def setup(backend: str):
        def run() -> None:
            encoders.release()
            if backend == "auto":
                encoders.choose(info.json, info.spans_concatenate, "auto")  # both encoders, the load-time gate
            else:
                encoders.load("tokenizers", info.json)
        return run

    set_fast, set_ref = best_of(setup("auto")), best_of(setup("tokenizers"))
    fast, ref = encoders.load("fast", info.json), encoders.load("tokenizers", info.json)
    rows = [("raw fastokens encode_batch_flat (baseline)", best_of(raw(fast)), 0.0),
            ("raw tokenizers encode_batch_fast + .ids", best_of(raw(ref)), 0.0),
            ("encoders built + load-time gate (per run)", set_fast, None),
            ("tokenize stage, fast backend (gate on)", best_of(stage("auto")), set_fast),
            ("tokenize stage, fast, run-time gate skipped", best_of(stage("auto", gate=False)), set_fast),
            ("tokenize stage, fast backend, Parquet", best_of(stage("auto", parquet)), set_fast),
            ("tokenize stage, fast backend, workers=2", best_of(stage("auto", data, 2), 2), set_fast),
            ("tokenize stage, tokenizers backend", best_of(stage("tokenizers")), set_ref)]
    base = rows[0][1]
    print(f"\n## tokenize stage vs the raw encoders: {name}, {len(records):,} records, {n_tokens:,} tokens")
    print(f"{'what':44} {'seconds':>8} {'Mtok/s':>8} {'vs fast raw':>12} {'setup out':>10}")
    for what, sec, fixed in rows:
        steady = "" if fixed is None else f"{base / max(sec - fixed, 1e-9):10.2f}"
        print(f"{what:44} {sec:8.3f} {n_tokens / sec / 1e6:8.2f} {base / sec:12.2f} {steady}")
    gate = rows[3][1] - rows[4][1]
    print(f"run-time gate (first {encoders.SAMPLE_FIRST} spans and {encoders.SAMPLE_SHARE:.0%} of the rest of each "
          f"chunk, re-encoded by tokenizers): {gate:.3f} s = {gate / (rows[3][1] - set_fast):.0%} of the stage "
          f"(setup out), {gate / base:.2f}x the fast encoder's whole raw time")
    print("goal: 'vs fast raw' >= 0.50 for the stage with the fast backend (JSON parsing and span building included);"
          " 'setup out' is the stage's throughput with its once-per-run setup taken out")


def _corpora(tmp: Path) -> list[tuple[str, str, Path, dict]]:
    """(name, kind, file, fields) of every real corpus here, written as the kind's records."""
    out = []
    gsm = SHARED / "gsm8k"
    if gsm.is_dir():
        for split in ("train", "test"):
            out.append((f"gsm8k/{split}", "sft", gsm / f"{split}.jsonl", {"query_field": "question",
                                                                           "response_field": "answer"}))
    arena = SHARED / "arena_hard_slice" / "answers_gpt-4-0314.jsonl"
    if arena.is_file():
        out.append(("arena-hard", "sft", arena, {"query_field": "prompt", "response_field": "response"}))
        text = tmp / "arena-text.jsonl"
        text.write_text("".join(json.dumps({"text": r["prompt"] + "\n\n" + r["response"]}) + "\n"
                                for r in map(json.loads, arena.read_text().splitlines())))
        out.append(("arena-hard as text", "text", text, {}))
    orca = SHARED / "orca_dpo_pairs" / "validation.jsonl"
    if orca.is_file():
        chats = tmp / "orca-chats.jsonl"
        rows = [json.loads(x) for x in orca.read_text().splitlines()]
        chats.write_text("".join(json.dumps({"messages": r["input"]["messages"] + r[side]}) + "\n"
                                 for r in rows for side in ("preferred_output", "non_preferred_output")))
        out.append(("orca_dpo_pairs chats", "chat", chats, {}))
        plain = tmp / "orca-chats-plain.jsonl"  # no system turn, an empty tool list: what strict templates take
        plain.write_text("".join(json.dumps({"messages": [m for m in r["input"]["messages"] if m["role"] != "system"]
                                             + r[side], "tools": []}) + "\n"
                                 for r in rows for side in ("preferred_output", "non_preferred_output")))
        out.append(("orca chats, no system, tools []", "chat", plain, {}))
    return out


def proof(tmp: Path) -> None:
    tokenizers = [p for p in (SHARED / "gpt2", SHARED / "llama3") if (p / "tokenizer.json").is_file()]
    corpora = _corpora(tmp)
    if not tokenizers or not corpora:
        print("\n(proof skipped: ../shared/data is absent)")
        return
    templates = sorted((SHARED / "chat_templates").glob("*.jinja"))
    print("\n## --check-tokens all: every span encoded by fastokens and by tokenizers, compared")
    print(f"{'corpus':34} {'tokenizer':>9} {'template':>22} {'spans':>9} {'checked':>9} {'mismatches':>10} {'backend':>10}")
    for tok in tokenizers:
        info = load_tokenizer(str(tok))
        for name, kind, path, fields in corpora:
            for tpl in ([None] + templates if kind == "chat" else [None]):
                details: dict = {}
                cfg = C.TokenizeConfig(kind=kind, check_tokens="all", tokenizer_backend="auto", skip_bad=True,
                                       max_bad="100%", template=str(tpl) if tpl else "auto", **fields)
                out = tmp / "proof"
                shutil.rmtree(out, ignore_errors=True)
                try:
                    tokenize([str(path)], out, cfg, tokenizer=info, details=details)
                except Exception as e:  # a template that refuses every record: nothing to compare
                    print(f"{name:34} {tok.name:>9} {(tpl.stem[:22] if tpl else '-'):>22}   ({type(e).__name__})")
                    continue
                bad = 0 if details["backend"] == "fast" else 1  # a fall-back to tokenizers means a difference
                print(f"{name:34} {tok.name:>9} {(tpl.stem[:22] if tpl else '-'):>22} {details['spans']:9,} "
                      f"{details['spans_checked']:9,} {bad:10} {details['backend']:>10}")
    print("goal: 0 mismatches everywhere (a mismatch makes auto fall back: the backend column would say tokenizers)")


def main() -> None:
    global REPEAT
    if "--repeat" in sys.argv:  # GSM8K xN for part 1 (the default, 8, is ~60k records)
        REPEAT = int(sys.argv[sys.argv.index("--repeat") + 1])
    tmp = Path(tempfile.mkdtemp())
    throughput(tmp)
    if "--no-proof" not in sys.argv:
        proof(tmp)
    shutil.rmtree(tmp)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
