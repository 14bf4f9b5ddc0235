"""Does packing pay for hybrid models on CPU as it does for dense ones? Training tokens/s, forward + backward.

GSM8K lengths (as bench_attention: GPT-2 tokens, Alpaca template; synthetic lognormal lengths when
../shared/data is absent), pack length 2048, the same examples two ways:
    packed              bfd packs, one pack per micro-batch (attn "packer", mixers kept to each example)
    padded-to-longest   batches of 8 in data order, each padded to its longest example (attn "sdpa")
for a small Qwen3.5 text model (gated delta-net layers 3 : 1 full attention) and a dense model of the
same size (the same Qwen3.5 with every layer full attention), and, for reference, small LFM2 (short
convolutions) and Falcon-H1 (Mamba-2 beside attention) models. The goal (issue 28): the hybrid's
packed/padded speed-up is not below the dense model's. Rounds are interleaved so that drift on a shared
machine hits every layout alike; the ratio printed is the median of per-round ratios.

    python benchmarks/bench_hybrid.py [--rounds 3] [--models qwen3_5_text,dense]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import BATCH, PACK_LEN, measure, workload  # noqa: E402


VOCAB = 50257
SIZE = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=4, head_dim=32, max_position_embeddings=PACK_LEN)


def config(name: str):
    import transformers

    if name in ("qwen3_5_text", "dense"):
        kinds = ["linear_attention"] * 3 + ["full_attention"] if name == "qwen3_5_text" else ["full_attention"] * 4
        return transformers.AutoConfig.for_model(
            "qwen3_5_text", **SIZE, layer_types=kinds, linear_num_key_heads=4, linear_num_value_heads=8,
            linear_key_head_dim=32, linear_value_head_dim=32)
    if name == "lfm2":
        return transformers.AutoConfig.for_model(
            "lfm2", **{k: v for k, v in SIZE.items() if k != "head_dim"},
            layer_types=["conv", "conv", "full_attention", "conv"])
    if name == "falcon_h1":
        return transformers.AutoConfig.for_model(
            "falcon_h1", **SIZE, mamba_n_heads=8, mamba_d_head=32, mamba_n_groups=1, mamba_d_state=16,
            mamba_d_ssm=256, mamba_expand=1, mamba_chunk_size=64)
    raise SystemExit(f"unknown model {name!r}: choose from qwen3_5_text, dense, lfm2, falcon_h1")


def build(name: str, attn: str):
    import transformers

    from packer.train.hf.integration import use_packer_attention

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config(name), attn_implementation="sdpa")
    if attn == "packer":
        model = use_packer_attention(model)  # refused unless `make models` verified the family
    return model.train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="qwen3_5_text,dense,lfm2,falcon_h1")
    args = ap.parse_args()
    lengths, seqs, _, packs = workload(VOCAB)
    real = int(lengths.sum())
    micro = []
    for p in packs:
        cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths[p])]), dtype=torch.int32)
        micro.append((torch.cat([seqs[i] for i in p])[None], torch.cat([torch.arange(lengths[i]) for i in p])[None],
                      cu, int(lengths[p].max())))
    longest = []
    for a in range(0, len(seqs), BATCH):
        group = seqs[a:a + BATCH]
        w = max(len(s) for s in group)
        ids, mask = torch.zeros(len(group), w, dtype=torch.long), torch.zeros(len(group), w, dtype=torch.long)
        for r, s in enumerate(group):
            ids[r, :len(s)], mask[r, :len(s)] = s, 1
        longest.append((ids, mask))

    def packed_step(model, ids, pos, cu, mx):
        return lambda: model(input_ids=ids, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=mx,
                             max_length_k=mx).logits.float().logsumexp(-1).mean().backward()

    def padded_step(model, ids, mask):
        return lambda: model(input_ids=ids, attention_mask=mask).logits.float().logsumexp(-1).mean().backward()

    results = {}
    for name in args.models.split(","):
        packed_model, padded_model = build(name, "packer"), build(name, "sdpa")
        results[name] = measure({"packed": [packed_step(packed_model, *x) for x in micro],
                                 "padded-to-longest": [padded_step(padded_model, *x) for x in longest]},
                                rounds=args.rounds, once=())
    print(f"\n## CPU training, hybrid vs dense: {len(lengths)} GSM8K examples, {real:,} real tokens, pack length "
          f"{PACK_LEN}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds")
    print(f"{'model':14} {'layout':18} {'seconds':>8} {'real tok/s':>10} {'packed is':>10}")
    for model, rows in results.items():
        for layout, (sec, ratio, lo, hi) in rows.items():
            spread = f"  ({lo:.2f}-{hi:.2f})" if layout != "packed" else ""
            print(f"{model:14} {layout:18} {sec:8.2f} {real / sec:10.0f} {ratio:9.2f}x{spread}")
    if "qwen3_5_text" in results and "dense" in results:
        hybrid, dense = results["qwen3_5_text"]["padded-to-longest"][1], results["dense"]["padded-to-longest"][1]
        print(f"\npacked speed-up over padded-to-longest: Qwen3.5 hybrid {hybrid:.2f}x, dense {dense:.2f}x "
              f"-> hybrid/dense {hybrid / dense:.2f} (goal: >= 1.00, within the rounds' spread)")


if __name__ == "__main__":
    main()
