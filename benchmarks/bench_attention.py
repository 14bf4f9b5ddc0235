"""Does packing with varlen attention pay on CPU? Real training tokens/s, forward + backward.

GSM8K lengths (GPT-2, Alpaca; synthetic lognormal lengths when ../shared/data is absent), pack length
2048, the same examples three ways:
    packed            bfd packs, one pack per micro-batch, attention per example (varlen)
    padded-to-longest batches of 8 in data order, each padded to its longest example (dynamic padding)
    padded-to-pack    every example padded to 2048
for Packer's model and a small transformers Llama (hidden 256, 4 layers). Also prints the waste the
planner predicts (padded tokens / real tokens) next to the measured speed-ups.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

import packer
from packer.model import ModelConfig, PackedLlama

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PACK_LEN, BATCH, N_EXAMPLES, VOCAB = 2048, 8, 48, 50257


def gsm8k_lengths() -> np.ndarray:
    gsm, gpt2 = SHARED / "gsm8k" / "train.jsonl", SHARED / "gpt2"
    if gsm.is_file() and gpt2.is_dir():
        from packer.templates import ALPACA
        from packer.tokenizer import load_tokenizer

        tok = load_tokenizer(str(gpt2)).build()
        recs = [json.loads(x) for x in gsm.read_text().splitlines()[:N_EXAMPLES]]
        return np.array([len(tok.encode(ALPACA.replace("{query}", r["question"]) + r["answer"]).ids) + 1
                         for r in recs])
    return np.clip(np.random.default_rng(0).lognormal(5.2, 0.4, N_EXAMPLES), 60, 460).astype(int)


def own_model():
    torch.manual_seed(0)
    return PackedLlama(ModelConfig(vocab_size=VOCAB, hidden=256, layers=4, heads=8, kv_heads=4, intermediate=688),
                       backend="sdpa")


def hf_model(attn: str):
    import transformers

    from packer.hf import register

    register()
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=PACK_LEN)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)


def step_own(model, ids, pos, cu, max_len):
    logits = model(ids, pos, cu, max_len)
    logits.float().logsumexp(-1).mean().backward()


def timed(fn, repeat=2) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    torch.set_num_threads(2)
    lengths = gsm8k_lengths()
    real = int(lengths.sum())
    rng = np.random.default_rng(0)
    seqs = [torch.from_numpy(rng.integers(0, VOCAB, n)) for n in lengths]
    plan = packer.plan(lengths, PACK_LEN, "bfd")
    packs = [np.asarray(p) for p in plan.packs()]

    def packed_inputs():
        """One micro-batch per pack: a [1, <=2048] row with its cu_seqlens (about 2048 real tokens,
        like a padded micro-batch of 8 examples)."""
        out = []
        for p in packs:
            ids = torch.cat([seqs[i] for i in p])[None]
            pos = torch.cat([torch.arange(lengths[i]) for i in p])[None]
            cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths[p])]), dtype=torch.int32)
            out.append((ids, pos, cu, int(lengths[p].max())))
        return out

    def padded(width_of):
        batches = []
        for a in range(0, len(seqs), BATCH):
            group = seqs[a:a + BATCH]
            w = width_of(group)
            ids = torch.zeros(len(group), w, dtype=torch.long)
            mask = torch.zeros(len(group), w, dtype=torch.long)
            for r, s in enumerate(group):
                ids[r, :len(s)] = s
                mask[r, :len(s)] = 1
            batches.append((ids, mask))
        return batches

    longest = padded(lambda g: max(len(s) for s in g))
    full = padded(lambda g: PACK_LEN)
    waste = {name: sum(b[0].numel() for b in bs) / real for name, bs in (("longest", longest), ("pack", full))}
    waste["packed"] = plan.num_packs * PACK_LEN / real

    results = []
    # Packer's model
    m = own_model()
    micro = packed_inputs()
    results.append(("packer model", "packed", timed(lambda: [step_own(m, *x) for x in micro], 1)))
    for name, bs in (("padded-to-longest", longest), ("padded-to-pack", full)):
        def run(bs=bs):
            for b, mask in bs:
                rows = b.shape[1]
                cu_b = torch.arange(0, (b.shape[0] + 1) * rows, rows, dtype=torch.int32)
                step_own(m, b, torch.arange(rows).repeat(b.shape[0], 1), cu_b, rows)
        results.append(("packer model", name, timed(run, 1)))
    # transformers Llama
    try:
        hf_packed, hf_pad = hf_model("packer"), hf_model("sdpa")
    except ImportError:
        hf_packed = None
    if hf_packed is not None:
        def hf_step_packed():
            for ids, pos, cu, mx in micro:
                hf_packed(input_ids=ids, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=mx,
                          max_length_k=mx).logits.float().logsumexp(-1).mean().backward()
        results.append(("hf llama", "packed", timed(hf_step_packed, 1)))
        for name, bs in (("padded-to-longest", longest), ("padded-to-pack", full)):
            def run(bs=bs):
                for b, mask in bs:
                    hf_pad(input_ids=b, attention_mask=mask).logits.float().logsumexp(-1).mean().backward()
            results.append(("hf llama", name, timed(run, 1)))

    print(f"\n## CPU training throughput: {len(lengths)} GSM8K examples, {real:,} real tokens, "
          f"pack length {PACK_LEN}, {torch.get_num_threads()} threads")
    print(f"predicted compute per real token: packed {waste['packed']:.2f}, padded-to-longest "
          f"{waste['longest']:.2f}, padded-to-pack {waste['pack']:.2f}")
    print(f"{'model':14} {'layout':18} {'seconds':>8} {'real tok/s':>10} {'packed is':>10}")
    by = {(a, b): s for a, b, s in results}
    for model, layout, sec in results:
        ratio = by[(model, layout)] / by[(model, "packed")]
        print(f"{model:14} {layout:18} {sec:8.2f} {real / sec:10.0f} {ratio:9.2f}x")


if __name__ == "__main__":
    main()
