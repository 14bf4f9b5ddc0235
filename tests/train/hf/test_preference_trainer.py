"""One DPO optimizer step with packer.hf.PreferenceTrainer on packed pairs equals TRL's DPOTrainer on the same
pairs unpacked (padding), including a [1, 3] split of pairs over micro-batches; stored reference log-probs give
the same step as a reference model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import packer
import packer.hf
from packer.core import config as C

transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")

CHARS = [chr(c) for c in range(32, 127)]


def char_tokenizer(folder):
    """A character-level tokenizer (no merges): Packer's span-by-span ids equal TRL's joint tokenization."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.add_special_tokens(["<pad>", "<eos>"])
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<eos>", "pad_token": "<pad>", "add_bos_token": False,
        "tokenizer_class": "PreTrainedTokenizerFast"}))
    return folder


PAIRS = [  # one long pair fills a pack alone, three short ones share the other: micro-batches of [1, 3] pairs
    {"prompt": "Describe the sea in detail: " + "waves and wind " * 3, "chosen": " It is vast and blue " * 4,
     "rejected": " It is a small pond " * 4},
    {"prompt": "2+2=", "chosen": " 4", "rejected": " 5"},
    {"prompt": "Sky color?", "chosen": " blue", "rejected": " green"},
    {"prompt": "Say hi.", "chosen": " hi", "rejected": " bye now"},
]


def tiny(vocab):
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa",
                                   pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    policy = transformers.LlamaForCausalLM(cfg).float()
    ref = copy.deepcopy(policy)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, ref


def _args(out, batch, ga, **kw):
    return dict(output_dir=str(out), per_device_train_batch_size=batch, gradient_accumulation_steps=ga, optim="sgd",
                learning_rate=0.5, max_steps=1, report_to=[], bf16=False, use_cpu=True, save_strategy="no",
                lr_scheduler_type="constant", **kw)


def trl_step(tmp_path, tok_dir, policy, ref, batch, ga):
    import datasets

    tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    model = copy.deepcopy(policy)
    args = trl.DPOConfig(**_args(tmp_path / f"trl{batch}", batch, ga), gradient_checkpointing=False, beta=0.1,
                         loss_type=["sigmoid"], max_length=4096)
    trainer = trl.DPOTrainer(model=model, ref_model=copy.deepcopy(ref), args=args,
                             train_dataset=datasets.Dataset.from_list(PAIRS), processing_class=tok)
    out = trainer.train()
    return model, out.training_loss


def packer_step(tmp_path, tok_dir, policy, run=None, **kw):
    if run is None:
        src = tmp_path / "pairs.jsonl"
        src.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
        run = tmp_path / "run"
        packer.pack([str(src)], run, tokenizer=str(tok_dir), tokenize_config=C.TokenizeConfig(kind="preference"),
                    plan_config=C.PlanConfig(pack_len=320, algorithm="bfd"))  # the long pair (312) alone
    packs = len(packer.PackedShards(run))
    loader = packer.PackedLoader(run, 1, shuffle=False, drop_last=False)
    per_pack = sorted(b["num_pairs"] for b in loader)
    model = copy.deepcopy(policy)
    args = transformers.TrainingArguments(**_args(tmp_path / "packer", 1, packs))
    trainer = packer.hf.PreferenceTrainer(model=model, args=args, run=run, loss="dpo", loss_kwargs={"beta": 0.1}, **kw)
    out = trainer.train()
    return model, out.training_loss, per_pack, run


def _weight_error(a, b, before):
    update = max(float((pb - p0).abs().max()) for pb, p0 in zip(b.parameters(), before.parameters()))
    return max(float((pa - pb).abs().max()) for pa, pb in zip(a.parameters(), b.parameters())) / update


def test_one_dpo_step_equals_trl_dpotrainer(tmp_path):
    tok_dir = char_tokenizer(tmp_path / "tok")
    policy, ref = tiny(len(CHARS) + 2)
    theirs, their_loss = trl_step(tmp_path, tok_dir, policy, ref, batch=2, ga=2)  # TRL: micro-batches of [2, 2]
    mine, my_loss, per_pack, run = packer_step(tmp_path, tok_dir, policy, ref_model=copy.deepcopy(ref))
    assert per_pack == [1, 3]  # ms-swift's case: micro-batches of 1 and 3 pairs
    loss_err = abs(my_loss - their_loss) / abs(their_loss)
    w_err = _weight_error(mine, theirs, policy)
    print(f"\nDPO one step, Packer [1, 3] vs TRL [2, 2]: loss {my_loss:.7f} vs {their_loss:.7f} "
          f"(relative {loss_err:.1e}), weights {w_err:.1e} of the update")
    assert loss_err < 1e-5 and w_err < 1e-4, (loss_err, w_err)
    # TRL's own [3, 1] split averages each micro-batch: another loss, which Packer's normalization avoids
    uneven, uneven_loss = trl_step(tmp_path, tok_dir, policy, ref, batch=3, ga=2)
    print(f"TRL [3, 1]: loss {uneven_loss:.7f}, weights {_weight_error(uneven, theirs, policy):.1e} off [2, 2]")
    assert _weight_error(uneven, theirs, policy) > 1e-3
    # stored reference log-probs give the same step without a reference model
    path = packer.hf.reference_logps(copy.deepcopy(ref), run)
    stored, stored_loss, _, _ = packer_step(tmp_path, tok_dir, policy, run=run, ref_logps=path)
    assert abs(stored_loss - my_loss) / abs(my_loss) < 1e-5 and _weight_error(stored, mine, policy) < 1e-4
