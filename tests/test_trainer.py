"""Hugging Face Trainer: one optimizer step packed equals one step unpacked (CPU, fp32, tiny Llama)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from packer.hf import PackedCollator, use_packer_attention  # noqa: E402
from packer.inmemory import pack_dataset  # noqa: E402

VOCAB = 97


def tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float()


def examples(n=12):
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(n):
        length = int(torch.randint(3, 30, (1,), generator=g))
        ids = torch.randint(0, VOCAB, (length,), generator=g).tolist()
        prompt = int(torch.randint(1, length - 1, (1,), generator=g))
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def pad_collate(features):
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), width, dtype=torch.long)
    labels = torch.full((len(features), width), -100)
    mask = torch.zeros(len(features), width, dtype=torch.long)
    for r, f in enumerate(features):
        n = len(f["input_ids"])
        ids[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class LossLog(transformers.TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def train_one_step(model, dataset, collator, batch_size, tmp_path):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch_size, gradient_accumulation_steps=2,
        max_steps=1, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
        max_grad_norm=0.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        remove_unused_columns=False, dataloader_drop_last=False, disable_tqdm=True, seed=0)
    log = LossLog()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                                   callbacks=[log])
    trainer.train()
    return log.losses[0]


def test_trainer_step_packed_equals_unpacked(tmp_path):
    exs = examples()
    # unpacked: one example per row, padded; 12 examples = 2 micro-batches of 6
    plain = tiny_llama()
    start = {k: v.clone() for k, v in plain.state_dict().items()}
    loss_plain = train_one_step(plain, ListDataset(exs), pad_collate, 6, tmp_path / "a")
    # packed: the same examples in packs of 64 tokens; all packs in 2 micro-batches
    packs = pack_dataset(exs, 64)
    packed = use_packer_attention(tiny_llama())
    assert all(torch.equal(packed.state_dict()[k], v) for k, v in start.items())
    loss_packed = train_one_step(packed, packs, PackedCollator(), -(-len(packs) // 2), tmp_path / "b")
    assert abs(loss_plain - loss_packed) < 1e-5
    moved = 0
    for (name, a), b in zip(plain.named_parameters(), packed.parameters()):
        delta = (a.detach() - start[name]).abs().max()
        moved += int(delta > 0)
        assert (a.detach() - b.detach()).abs().max() <= 1e-4 * max(delta, 1e-8) + 1e-7, name
    assert moved > 0, "the step must change the weights"


def test_trainer_negative_control_detects_cross_example_attention(tmp_path):
    """Same packed run, but the batch hides the example boundaries: the loss must differ."""
    exs = examples()
    plain = tiny_llama()
    loss_plain = train_one_step(plain, ListDataset(exs), pad_collate, 6, tmp_path / "a")

    def leaky(features):
        batch = PackedCollator()(features)
        total = batch["input_ids"].shape[1]
        del batch["cu_seq_lens_q"], batch["cu_seq_lens_k"], batch["max_length_q"], batch["max_length_k"]
        batch["position_ids"] = torch.arange(total)[None]
        return batch

    packs = pack_dataset(exs, 64)
    loss_leaky = train_one_step(use_packer_attention(tiny_llama()), packs, leaky, -(-len(packs) // 2), tmp_path / "b")
    assert abs(loss_plain - loss_leaky) > 1e-3
