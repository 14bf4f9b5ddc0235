"""Does packing with varlen attention pay on CPU? Real training tokens/s, forward + backward.

GSM8K lengths (GPT-2, Alpaca; synthetic lognormal lengths when ../shared/data is absent), pack length
2048, the same examples three ways:
    packed            bfd packs, one pack per micro-batch, attention per example (varlen)
    padded-to-longest batches of 8 in data order, each padded to its longest example (dynamic padding)
    padded-to-pack    every example padded to 2048
for Packer's model and a small transformers Llama (hidden 256, 4 layers); then the same model as a
Mistral with a sliding window of 128 (shorter than most examples) against a window of 2048 (no effect),
packed vs padded-to-longest: is the speed-up kept with windows on? Also prints the waste the planner
predicts (padded tokens / real tokens) next to the measured speed-ups.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

import packer
from packer.train.model import ModelConfig, PackedLlama

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PACK_LEN, BATCH, N_EXAMPLES, VOCAB = 2048, 8, 48, 50257
WINDOW = 128  # gpt-oss's window; most GSM8K examples are longer


def gsm8k_lengths() -> np.ndarray:
    gsm, gpt2 = SHARED / "gsm8k" / "train.jsonl", SHARED / "gpt2"
    if gsm.is_file() and gpt2.is_dir():
        from packer.build.templates import ALPACA
        from packer.build.load_tokenizer import load_tokenizer

        tok = load_tokenizer(str(gpt2)).build()
        recs = [json.loads(x) for x in gsm.read_text().splitlines()[:N_EXAMPLES]]
        return np.array([len(tok.encode(ALPACA.replace("{query}", r["question"]) + r["answer"]).ids) + 1
                         for r in recs])
    return np.clip(np.random.default_rng(0).lognormal(5.2, 0.4, N_EXAMPLES), 60, 460).astype(int)


def own_model():
    torch.manual_seed(0)
    return PackedLlama(ModelConfig(vocab_size=VOCAB, hidden=256, layers=4, heads=8, kv_heads=4, intermediate=688),
                       backend="sdpa")


def hf_model(attn: str, window: int | None = None):
    """A small transformers Llama, or with `window` a Mistral (the same model plus a sliding window)."""
    import transformers

    from packer.train.hf.integration import register

    register()
    size = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=PACK_LEN)
    cfg = (transformers.LlamaConfig(**size) if window is None else
           transformers.MistralConfig(**size, sliding_window=window, head_dim=32))
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)


def step_own(model, ids, pos, cu, max_len):
    logits = model(ids, pos, cu, max_len)
    logits.float().logsumexp(-1).mean().backward()


def measure(steps: dict[str, list], rounds: int = 3, once: tuple[str, ...] = ("padded-to-pack",)) -> dict:
    """Seconds for one pass over each layout's steps (callables, one micro-batch each).

    Every layout first runs one step as warm-up. Layouts not in `once` are timed `rounds` times,
    interleaved round by round so that drift on a shared machine hits them alike. Each round gives a
    ratio against "packed" in that round, and the median of those ratios is reported. Layouts in
    `once` take minutes per pass, so they are timed once and compared with the median packed time.
    """
    for fns in steps.values():
        fns[0]()

    def one_pass(fns) -> float:
        t = time.perf_counter()
        for fn in fns:
            fn()
        return time.perf_counter() - t

    sec: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fns in steps.items():
            if name not in once:
                sec[name].append(one_pass(fns))
    for name in once:
        if name in steps:
            sec[name].append(one_pass(steps[name]))
    packed = float(np.median(sec["packed"]))
    out = {}
    for name, times in sec.items():
        ratios = [t / p for t, p in zip(times, sec["packed"], strict=True)] if name not in once else [times[0] / packed]
        out[name] = (float(np.median(times)), float(np.median(ratios)), min(ratios), max(ratios))
    return out


def workload(vocab: int):
    """What the CPU benchmarks train on, the same each run: 2 threads, the GSM8K lengths, random ids below `vocab`
    (seeded), and their bfd plan at PACK_LEN -> (lengths, seqs, plan, packs as index arrays)."""
    torch.set_num_threads(2)
    lengths = gsm8k_lengths()
    rng = np.random.default_rng(0)
    seqs = [torch.from_numpy(rng.integers(0, vocab, n)) for n in lengths]
    plan = packer.plan(lengths, PACK_LEN, "bfd")
    return lengths, seqs, plan, [np.asarray(p) for p in plan.packs()]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows-only", action="store_true",
                    help="only the Mistral window comparison (minutes, not the padded-to-pack passes)")
    windows_only = ap.parse_args().windows_only
    lengths, seqs, plan, packs = workload(VOCAB)
    real = int(lengths.sum())

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

    micro = packed_inputs()
    results = {}
    m = own_model()

    def own_padded(b):
        rows = b.shape[1]
        cu_b = torch.arange(0, (b.shape[0] + 1) * rows, rows, dtype=torch.int32)
        return lambda: step_own(m, b, torch.arange(rows).repeat(b.shape[0], 1), cu_b, rows)

    if not windows_only:
        results["packer model"] = measure({
            "packed": [lambda x=x: step_own(m, *x) for x in micro],
            "padded-to-longest": [own_padded(b) for b, _ in longest],
            "padded-to-pack": [own_padded(b) for b, _ in full]})
    try:
        hf_packed, hf_pad = hf_model("packer"), hf_model("sdpa")
    except ImportError:
        hf_packed = None
    if hf_packed is not None:
        def hf_packed_step(model, ids, pos, cu, mx):
            return lambda: model(input_ids=ids, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                 max_length_q=mx, max_length_k=mx).logits.float().logsumexp(-1).mean().backward()

        def hf_pad_step(model, b, mask):
            return lambda: model(input_ids=b, attention_mask=mask).logits.float().logsumexp(-1).mean().backward()

        if not windows_only:
            results["hf llama"] = measure({
                "packed": [hf_packed_step(hf_packed, *x) for x in micro],
                "padded-to-longest": [hf_pad_step(hf_pad, *x) for x in longest],
                "padded-to-pack": [hf_pad_step(hf_pad, *x) for x in full]})
        # Windows on: a Mistral with a window shorter than most examples, against the same Mistral with
        # the window longer than every example; both layouts honour the window (packed through
        # packer's varlen sdpa, padded through transformers' sdpa mask).
        for window in (PACK_LEN, WINDOW):
            packed_w, pad_w = hf_model("packer", window), hf_model("sdpa", window)
            results[f"hf mistral w{window}"] = measure({
                "packed": [hf_packed_step(packed_w, *x) for x in micro],
                "padded-to-longest": [hf_pad_step(pad_w, *x) for x in longest]}, once=())

    print(f"\n## CPU training throughput: {len(lengths)} GSM8K examples, {real:,} real tokens, "
          f"pack length {PACK_LEN}, {torch.get_num_threads()} threads")
    print(f"predicted compute per real token: packed {waste['packed']:.2f}, padded-to-longest "
          f"{waste['longest']:.2f}, padded-to-pack {waste['pack']:.2f}")
    print("(padded-to-longest: median of 3 interleaved rounds, ratio range in brackets; padded-to-pack: one pass)")
    print(f"{'model':14} {'layout':18} {'seconds':>8} {'real tok/s':>10} {'packed is':>10}")
    for model, rows in results.items():
        for layout, (sec, ratio, lo, hi) in rows.items():
            spread = f"  ({lo:.2f}-{hi:.2f})" if layout == "padded-to-longest" else ""
            print(f"{model:14} {layout:18} {sec:8.2f} {real / sec:10.0f} {ratio:9.2f}x{spread}")
    with_w, without = results.get(f"hf mistral w{WINDOW}"), results.get(f"hf mistral w{PACK_LEN}")
    if with_w and without:
        a, b = with_w["padded-to-longest"][1], without["padded-to-longest"][1]
        print(f"\npacked speed-up over padded-to-longest: window {WINDOW} {a:.2f}x, no window {b:.2f}x "
              f"(windows on / off: {a / b:.2f}; >= 1 means no slower with windows)")

if __name__ == "__main__":
    main()
