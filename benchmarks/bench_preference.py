"""Preference training throughput on CPU: packed pairs vs TRL's padded pairs, same model, interleaved rounds.
(goal: packed >= 1.3x the padded pairs' real tokens per second; and the shared-prompt layout's token saving)

Data: ../shared/data/orca_dpo_pairs (real pairs in OpenAI's preference format) with the GPT-2 tokenizer
(Packer's explicit text pairs: system + question as the prompt). Model: a small random Llama (fp32, sdpa).
One "epoch" is a forward and backward pass of the DPO loss over every pair:
  - padded: TRL's DataCollatorForPreference layout, batches of --pairs pairs as [chosen; rejected] rows
    right-padded to the batch's longest, the sequence log-probs summed over each reply's tokens;
  - packed: PackedLoader over `packer pack --kind preference` at --pack-len, one pack a micro-batch,
    in the pairs layout and the shared-prompt layout (the prompt once).
Each round runs the three in turn (interleaved), so machine load falls on all alike; the ratio is per round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import packer
from packer import preference as P
from packer.core import config as C
from packer.core.formats.shards import ShardSet

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def pairs_jsonl(tmp: Path, n: int) -> Path:
    out = tmp / "pairs.jsonl"
    rows = [json.loads(x) for x in (SHARED / "orca_dpo_pairs" / "validation.jsonl").read_text().splitlines()][:n]
    with open(out, "w") as f:
        for r in rows:
            prompt = "\n\n".join(m["content"] for m in r["input"]["messages"]) + "\n\nAnswer:"
            f.write(json.dumps({"prompt": prompt, "chosen": " " + r["preferred_output"][0]["content"],
                                "rejected": " " + r["non_preferred_output"][0]["content"]}) + "\n")
    return out


def model(vocab: int):
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).float()


def padded_batches(run: Path, pairs: int, pad: int, keep: set[int]):
    """TRL's padded layout from the same tokenized rows: per batch [chosen rows; rejected rows], right-padded."""
    from packer.core.formats.tokenized import open_tokenized

    _, tables = open_tokenized(run / "tokenized")
    rows = {}
    for t in tables:
        d = t.to_pydict()
        for e, r, ids, m in zip(d["example_index"], d["role"], d["input_ids"], d["loss_mask"]):
            rows[(e, r)] = (ids, m)
    records = sorted({e for e, _ in rows} & keep)
    out = []
    for a in range(0, len(records), pairs):
        group = records[a:a + pairs]
        seqs = [rows[(e, 1)] for e in group] + [rows[(e, 2)] for e in group]
        L = max(len(s[0]) for s in seqs)
        ids = torch.full((len(seqs), L), pad)
        mask = torch.zeros(len(seqs), L, dtype=torch.bool)
        att = torch.zeros(len(seqs), L, dtype=torch.long)
        for i, (x, m) in enumerate(seqs):
            ids[i, :len(x)] = torch.tensor(x)
            mask[i, :len(x)] = torch.tensor(m, dtype=torch.bool)
            att[i, :len(x)] = 1
        out.append((ids, mask, att, len(group)))
    return out


def padded_epoch(m, batches, total_pairs: int) -> None:
    for ids, mask, att, n in batches:
        logits = m(input_ids=ids, attention_mask=att).logits
        lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(2, ids[:, 1:, None]).squeeze(2)
        seq = (lp * mask[:, 1:]).sum(1)
        c, r = seq[:n], seq[n:]
        (-F.logsigmoid(0.1 * (c - r)).sum() / total_pairs).backward()


def packed_epoch(m, run: Path, total_pairs: int) -> None:
    for b in packer.PackedLoader(run, 1, shuffle=False, drop_last=False, flatten=True):
        logits = m(input_ids=b["input_ids"], position_ids=b["position_ids"],
                   attention_mask=P.shared_prompt_mask(b)).logits
        lp, _ = P.sequence_logps(logits, b["labels"], b["cu_seqlens"], prompt_segment=b["prompt_segment"])
        c, r = P.pairs(b)
        (-F.logsigmoid(0.1 * (lp[c] - lp[r])).sum() / total_pairs).backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=96)
    ap.add_argument("--pairs", type=int, default=4, help="pairs per padded batch (TRL's per_device_train_batch_size)")
    ap.add_argument("--pack-len", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not (SHARED / "orca_dpo_pairs").is_dir() or not (SHARED / "gpt2").is_dir():
        print("skipped: ../shared/data is absent")
        return
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-preference-"))
    src = pairs_jsonl(tmp, args.records)
    runs = {}
    for layout in ("pairs", "shared-prompt"):
        runs[layout] = tmp / layout
        packer.pack([str(src)], runs[layout], tokenizer=str(SHARED / "gpt2"),
                    tokenize_config=C.TokenizeConfig(kind="preference"),
                    plan_config=C.PlanConfig(pack_len=args.pack_len, layout=layout, algorithm="bfd", overlong="drop"))
    kept = json.loads((runs["pairs"] / "shards" / "manifest.json").read_text())["counts"]
    real = kept["tokens"]
    n = kept["preference"]["pairs"]
    shared_tokens = json.loads((runs["shared-prompt"] / "shards" / "manifest.json").read_text())["counts"]["tokens"]
    ds = packer.PackedShards(runs["pairs"])
    m = model(ds.vocab_size)
    eos = ds.manifest["tokenizer"].get("eos_id") or 0
    ss = ShardSet(runs["pairs"] / "shards")
    keep = {int(e) for i in range(len(ss)) for e, r in zip(ss.arrays(i)["example_index"], ss.arrays(i)["role"])
            if r == 1}
    batches = padded_batches(runs["pairs"], args.pairs, eos, keep)
    # the padded run must train on the same pairs as the packed one (--overlong drop may have dropped some)
    padded_tokens = sum(int(b[0].numel()) for b in batches)
    times = {"padded": [], "packed pairs": [], "packed shared-prompt": []}
    for _ in range(args.rounds):
        for name, fn in (("padded", lambda: padded_epoch(m, batches, n)),
                         ("packed pairs", lambda: packed_epoch(m, runs["pairs"], n)),
                         ("packed shared-prompt", lambda: packed_epoch(m, runs["shared-prompt"], n))):
            m.zero_grad()
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    print(f"\n## DPO forward+backward on CPU: {n} orca_dpo_pairs pairs, GPT-2 ids, {real:,} real tokens (pairs layout), "
          f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds")
    print(f"padded batches of {args.pairs} pairs hold {padded_tokens:,} tokens (with padding); the shared-prompt "
          f"layout {shared_tokens:,} ({1 - shared_tokens / real:.1%} fewer than pairs)")
    print(f"{'layout':>22} {'seconds':>8} {'real tok/s':>11} {'vs padded':>10}")
    for name, ts in times.items():
        ratios = [p / t for p, t in zip(times["padded"], ts)]
        print(f"{name:>22} {statistics.median(ts):8.2f} {real / statistics.median(ts):11.0f} "
              f"{statistics.median(ratios):9.2f}x  ({min(ratios):.2f}-{max(ratios):.2f})")
    print("goal: packed >= 1.3x padded")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
