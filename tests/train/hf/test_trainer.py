"""Hugging Face Trainer: one optimizer step packed equals one step unpacked (CPU, fp32, tiny models):
Llama, Mistral with a window shorter than the examples, Gemma 2 with soft-capping, gpt-oss with sinks;
each against a negative control (the adapter that dropped those settings fails the same test)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import packer.train.hf.integration as hf  # noqa: E402
from packer.train.hf.integration import PackedCollator, use_packer_attention  # noqa: E402
from packer.train.hf.verify import WINDOW, tiny_config  # noqa: E402
from packer.from_examples import pack_dataset  # noqa: E402

VOCAB = 97


def tiny(model_type="llama"):
    cfg = tiny_config(model_type, vocab_size=VOCAB)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float()


def tiny_llama():
    return tiny("llama")


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


class RecordingTrainer(transformers.Trainer):
    """Keeps each micro-batch's loss as training_step returns it (already scaled for accumulation)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.micro_losses: list[float] = []

    def training_step(self, *a, **k):
        loss = super().training_step(*a, **k)
        self.micro_losses.append(float(loss))
        return loss


def train_one_step(model, dataset, collator, batch_size, tmp_path):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch_size, gradient_accumulation_steps=2,
        max_steps=1, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
        max_grad_norm=0.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        remove_unused_columns=False, dataloader_drop_last=False, disable_tqdm=True, seed=0)
    log = LossLog()
    trainer = RecordingTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                               callbacks=[log])
    trainer.train()
    assert log.losses and abs(float(log.losses[0]) - sum(trainer.micro_losses)) < 1e-3, "what Trainer logs"
    return sum(trainer.micro_losses)  # unrounded: Trainer's log keeps 4 significant digits


def packed_vs_unpacked(model_type, tmp_path):
    """(loss relative difference, largest weight difference relative to the update) after one step."""
    exs = examples()
    # unpacked: one example per row, padded; 12 examples = 2 micro-batches of 6
    plain = tiny(model_type)
    start = {k: v.clone() for k, v in plain.state_dict().items()}
    loss_plain = train_one_step(plain, ListDataset(exs), pad_collate, 6, tmp_path / "a")
    # packed: the same examples in packs of 64 tokens; all packs in 2 micro-batches
    packs = pack_dataset(exs, 64)
    packed = use_packer_attention(tiny(model_type))
    assert all(torch.equal(packed.state_dict()[k], v) for k, v in start.items())
    loss_packed = train_one_step(packed, packs, PackedCollator(), -(-len(packs) // 2), tmp_path / "b")
    worst, moved = 0.0, 0
    for (name, a), b in zip(plain.named_parameters(), packed.parameters()):
        delta = (a.detach() - start[name]).abs().max().item()
        moved += int(delta > 0)
        worst = max(worst, ((a.detach() - b.detach()).abs().max().item() - 1e-7) / max(delta, 1e-8))
    assert moved > 0, "the step must change the weights"
    return abs(loss_plain - loss_packed) / abs(loss_plain), worst


VARIANT_FAMILIES = {"llama": set(), "mistral": {"sliding_window"}, "gemma2": {"softcap", "sliding_window"},
                    "gpt_oss": {"s_aux", "sliding_window"}}


@pytest.mark.parametrize("model_type", sorted(VARIANT_FAMILIES))
def test_trainer_step_packed_equals_unpacked(model_type, tmp_path):
    assert max(len(e["input_ids"]) for e in examples()) > WINDOW, "the window must be shorter than examples"
    loss, weights = packed_vs_unpacked(model_type, tmp_path)
    print(f"\n{model_type}: loss relative difference {loss:.1e}, weights {weights:.1e} of the update")
    assert loss < 1e-5 and weights < 1e-4, (loss, weights)


@pytest.mark.parametrize("model_type", sorted(set(VARIANT_FAMILIES) - {"llama"}))
def test_trainer_negative_control_old_adapter_differs(model_type, tmp_path, monkeypatch):
    """The adapter as it was (window, soft-cap and sinks dropped) fails the same test."""
    from transformers import AttentionInterface

    real = hf.packer_attention
    drop = VARIANT_FAMILIES[model_type]

    def old(module, q, k, v, mask, scaling=None, dropout=0.0, **kw):
        return real(module, q, k, v, mask, scaling=scaling, dropout=dropout,
                    **{n: x for n, x in kw.items() if n not in drop})

    hf.register()
    monkeypatch.setattr(hf, "register", lambda **kw: AttentionInterface.register(hf.NAME, old))
    loss, weights = packed_vs_unpacked(model_type, tmp_path)
    print(f"\n{model_type} without {', '.join(sorted(drop))}: loss relative difference {loss:.1e}, "
          f"weights {weights:.1e} of the update")
    assert loss > 1e-5 or weights > 1e-4, (loss, weights)
    AttentionInterface.register(hf.NAME, real)


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
