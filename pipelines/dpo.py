"""DPO recipe: preference pairs packed (--kind preference), then a few Trainer steps of DPO on them.

    python -m pipelines.dpo pairs.jsonl --out runs/dpo --tokenizer DIR --pack-len 2048 [--layout shared-prompt]
        [--model NAME_OR_DIR] [--steps 3]

Without --model it trains a tiny random Llama (a smoke run). The reference model is a frozen copy of the
policy at the start, as DPO's usually is; its log-probs are computed once and stored beside the run.
"""

from __future__ import annotations

import copy

from packer.core import config as C
from pipelines._common import arguments, run_stages


def main() -> None:
    ap = arguments(__doc__.splitlines()[0])
    ap.add_argument("--layout", default="pairs", choices=["pairs", "shared-prompt"])
    ap.add_argument("--model", default=None, help="a Hugging Face model name or folder (default: a tiny random Llama)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--beta", type=float, default=0.1)
    a = ap.parse_args()
    run_stages(a.data, a.out, a.tokenizer, C.TokenizeConfig(kind="preference"),
               C.PlanConfig(pack_len=a.pack_len, algorithm=a.algorithm, layout=a.layout), workers=a.workers)

    import transformers

    import packer
    from packer.hf import PreferenceTrainer, reference_logps

    vocab = packer.PackedShards(a.out).vocab_size
    if a.model:
        policy = transformers.AutoModelForCausalLM.from_pretrained(a.model, attn_implementation="sdpa")
    else:
        policy = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, attn_implementation="sdpa"))
    ref = reference_logps(copy.deepcopy(policy), a.out)  # once, beside the run
    args = transformers.TrainingArguments(f"{a.out}/dpo-train", per_device_train_batch_size=1, max_steps=a.steps,
                                          learning_rate=1e-5, report_to=[], save_strategy="no", logging_steps=1)
    PreferenceTrainer(model=policy, args=args, run=a.out, ref_logps=ref, loss="dpo",
                      loss_kwargs={"beta": a.beta}).train()


if __name__ == "__main__":
    main()
