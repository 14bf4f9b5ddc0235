"""How much faster is `packer pack` than the route a TRL user takes today, end to end? (goal: >= 5x at 200k)

Both sides start from the same JSON Lines file and end with packed data on disk, each in a fresh process
(its peak RSS measured there):

- packer: `packer pack DATA --out RUN --pack-len 2048` with its defaults (the fast tokenizer backend
  behind its gate, the ortools planner, the report);
- TRL route: `datasets.load_dataset("json")`, `.map` with the Hugging Face tokenizer (prompt and completion
  tokenized apart, the completion mask built, as TRL's SFT data preparation does), `trl.pack_dataset(...,
  strategy="bfd")`, `save_to_disk`.

Sizes: GSM8K-like sft records (GSM8K train repeated) at 50k, 200k and 800k with GPT-2, plus GSM8K as
chats with Llama 3's tokenizer and the Llama 3.1 template (the TRL route renders the same template; it
trains every token, having no assistant mask for this template, so it does less work than Packer's
per-turn mask). Packer's per-stage seconds come from its report. Needs ../shared/data; --sizes to choose.
Also: --backend tokenizers to time Packer with the reference backend (the before of issue 27).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{query}\n\n### Response:\n")

MEASURE = textwrap.dedent('''
    import json, resource, sys, time
    t = time.perf_counter()
    exec(sys.argv[1])
    seconds = time.perf_counter() - t
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print("RESULT " + json.dumps({"seconds": seconds, "peak_mib": peak / 1024}))
''')

PACKER = '''
from packer.cli import main
sys.argv = ["packer", "pack", DATA, "--out", OUT, "--pack-len", "2048", "--quiet", "--tokenizer", TOK, *ARGS]
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
'''

TRL_SFT = '''
import datasets, trl
from transformers import PreTrainedTokenizerFast
datasets.disable_progress_bars()
tok = PreTrainedTokenizerFast(tokenizer_file=TOK + "/tokenizer.json", eos_token="<|endoftext|>")
ds = datasets.load_dataset("json", data_files=DATA, split="train", cache_dir=OUT + "-cache")
def tokenize(batch):
    prompts = tok([TEMPLATE.replace("{query}", q) for q in batch["question"]], add_special_tokens=False)["input_ids"]
    answers = tok(batch["answer"], add_special_tokens=False)["input_ids"]
    ids = [p + a + [tok.eos_token_id] for p, a in zip(prompts, answers)]
    mask = [[0] * len(p) + [1] * (len(a) + 1) for p, a in zip(prompts, answers)]
    return {"input_ids": ids, "completion_mask": mask}
ds = ds.map(tokenize, batched=True, remove_columns=ds.column_names)
trl.pack_dataset(ds, 2048, strategy="bfd").save_to_disk(OUT)
'''

TRL_CHAT = '''
import datasets, trl
from transformers import AutoTokenizer
datasets.disable_progress_bars()
tok = AutoTokenizer.from_pretrained(TOK)
ds = datasets.load_dataset("json", data_files=DATA, split="train", cache_dir=OUT + "-cache")
def tokenize(batch):
    return {"input_ids": [tok.apply_chat_template(m, tokenize=True, return_dict=False) for m in batch["messages"]]}
ds = ds.map(tokenize, batched=True, remove_columns=ds.column_names)
trl.pack_dataset(ds, 2048, strategy="bfd").save_to_disk(OUT)
'''


def run(code: str, **names) -> dict:
    prelude = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    out = subprocess.run([sys.executable, "-c", MEASURE, prelude + code], capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode or line is None:
        raise SystemExit(f"failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def sft_data(tmp: Path, n: int) -> Path:
    lines = (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines()
    path = tmp / f"gsm{n}.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(lines[i % len(lines)] + "\n")
    return path


def chat_data(tmp: Path, n: int) -> Path:
    rows = [json.loads(x) for x in (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines()]
    path = tmp / f"chat{n}.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            r = rows[i % len(rows)]
            f.write(json.dumps({"messages": [{"role": "system", "content": "Solve step by step."},
                                             {"role": "user", "content": r["question"]},
                                             {"role": "assistant", "content": r["answer"]}]}) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50000,200000,800000")
    ap.add_argument("--chat", type=int, default=50000, help="records of the chat set (0: skip it)")
    ap.add_argument("--backend", default="auto", help="Packer's --tokenizer-backend")
    args = ap.parse_args()
    if not (SHARED / "gsm8k" / "train.jsonl").is_file() or not (SHARED / "gpt2").is_dir():
        print("skipped: ../shared/data is absent")
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    rows = []
    jobs = [("sft", int(n), SHARED / "gpt2", TRL_SFT) for n in args.sizes.split(",") if n]
    if args.chat and (SHARED / "llama3").is_dir():
        jobs.append(("chat", args.chat, SHARED / "llama3", TRL_CHAT))
    for kind, n, tok, trl_code in jobs:
        data = (sft_data if kind == "sft" else chat_data)(tmp, n)
        extra = ["--query-field", "question", "--response-field", "answer"] if kind == "sft" else ["--kind", "chat"]
        out = tmp / f"packer-{kind}-{n}"
        mine = run(PACKER, DATA=str(data), OUT=str(out), TOK=str(tok),
                   ARGS=extra + ["--tokenizer-backend", args.backend])
        report = json.loads((out / "report.json").read_text())
        theirs = run(trl_code, DATA=str(data), OUT=str(tmp / f"trl-{kind}-{n}"), TOK=str(tok), TEMPLATE=ALPACA)
        stages = report["seconds"]
        rest = mine["seconds"] - sum(stages.values())
        rows.append((kind, n, mine, theirs, stages, rest, report.get("tokenizer", {}).get("backend")))
        print(f"done {kind} {n}", file=sys.stderr)
    print("\n## packer pack vs the TRL route (datasets.map + trl.pack_dataset bfd + save_to_disk), this machine")
    print(f"{'data':>12} {'records':>8} {'packer s':>9} {'TRL s':>8} {'speed-up':>9} {'packer MiB':>11} {'TRL MiB':>8} "
          f"{'tokenize':>9} {'plan':>6} {'write':>6} {'other':>6} {'backend':>10}")
    for kind, n, mine, theirs, st, rest, backend in rows:
        print(f"{kind:>12} {n:>8,} {mine['seconds']:9.2f} {theirs['seconds']:8.2f} "
              f"{theirs['seconds'] / mine['seconds']:8.2f}x {mine['peak_mib']:11.0f} {theirs['peak_mib']:8.0f} "
              f"{st.get('tokenize', 0):9.2f} {st.get('plan', 0):6.2f} {st.get('write', 0):6.2f} {rest:6.2f} "
              f"{backend or '-':>10}")
    print("goal: speed-up >= 5x at 200k sft records, packer's peak memory no higher than before; 'other': start-up, "
          "tokenizer load and the gate, the report")


if __name__ == "__main__":
    main()
