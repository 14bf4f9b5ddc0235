"""Preference optimization with Hugging Face Trainer on a `--kind preference` run, and stored reference log-probs.

    from packer.hf import PreferenceTrainer
    trainer = PreferenceTrainer(model=policy, args=args, run="runs/dpo", ref_model=ref, loss="dpo", beta=0.1)
    trainer.train()

Batches come from PackedLoader over the run (this rank's packs; `per_device_train_batch_size` packs a
micro-batch); the loss of an optimizer step is the sum of per-pair losses over its micro-batches divided by
the step's global_num_pairs (all ranks), so packing, accumulation and data parallelism never change it.
The model sees each pack with a 4-D attention mask that keeps segments apart and lets shared-prompt replies
see their prompt (packer.train.preference.shared_prompt_mask; sdpa or eager attention).

Reference log-probs: `reference_logps(ref_model, run)` computes every row's summed log-prob once and stores it
beside the shards (RUN/reference/NAME.npz, tied to the shards' seal); `PreferenceTrainer(ref_logps=PATH)` then
never runs a reference model.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from packer.core.errors import ConfigError, FormatError
from packer.train import preference as P
from packer.train.loader import PackedLoader
from packer.train.reader import PackedShards

LOSSES = ("dpo", "ipo", "hinge", "robust", "simpo", "orpo", "kto")
MAX_ROLE = 6


def model_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per segment of a preference batch: the model's summed log-prob of its trained tokens, and their count."""
    attn = getattr(model.config, "_attn_implementation", "sdpa")
    if attn not in ("sdpa", "eager"):
        raise ConfigError(f"preference batches go to the model with a 4-D attention mask, which attn_implementation "
                          f"'{attn}' does not take here; load the model with attn_implementation='sdpa' or 'eager'")
    dtype = None if attn == "sdpa" else next(model.parameters()).dtype
    device = next(model.parameters()).device
    mask = P.shared_prompt_mask(batch, dtype).to(device)
    logits = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                   attention_mask=mask, use_cache=False).logits
    return P.sequence_logps(logits, batch["labels"].to(device), batch["cu_seqlens"].to(device),
                            prompt_segment=batch["prompt_segment"].to(device))


def reference_logps(model, run: str | Path, *, name: str = "reference", batch_size: int = 1) -> Path:
    """Every row's summed log-prob under `model` (the reference), computed once and stored as
    RUN/reference/NAME.npz: logp float64 [records, 7] and count int64 [records, 7] by (record, role), with the
    shards' seal, written to a temporary name and renamed. Returns the path."""
    from packer.core.storage import is_url

    if isinstance(run, str) and is_url(run):
        raise ConfigError(f"{run}: reference_logps writes RUN/reference/{name}.npz beside the run, so it takes a local "
                          "run folder; fetch the run (packer.core.runstore.fetch) and pass the local copy")
    ds = PackedShards(run)
    records = int(ds.manifest["counts"]["records"])
    logp = np.full((records, MAX_ROLE + 1), np.nan)
    count = np.zeros((records, MAX_ROLE + 1), np.int64)
    was = model.training
    model.eval()
    with torch.no_grad():
        for b in PackedLoader(run, batch_size, shuffle=False, drop_last=False, eval=True):
            lp, n = model_logps(model, b)
            keep = (b["pair_index"] >= 0) & (b["segment_role"] > 0) & (b["segment_role"] != 6)
            e, r = b["pair_index"][keep].numpy(), b["segment_role"][keep].numpy()
            logp[e, r] = lp[keep].double().cpu().numpy()
            count[e, r] = n[keep].cpu().numpy()
    model.train(was)
    out = Path(ds.path).parent / "reference" / f"{name}.npz" if (Path(ds.path).parent / "plan").exists() \
        else Path(ds.path) / "reference" / f"{name}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.npz")
    np.savez(tmp, logp=logp, count=count, seal=np.array(ds.manifest.get("manifest_sha256", "")))
    os.replace(tmp, out)
    return out


class ReferenceLogps:
    """Stored reference log-probs (reference_logps), checked against the run they are used with."""

    def __init__(self, path: str | Path, run: str | Path):
        ds = PackedShards(run)
        try:
            with np.load(path, allow_pickle=False) as z:
                self.logp, count, seal = z["logp"], z["count"], str(z["seal"])
        except (OSError, KeyError, ValueError) as e:
            raise FormatError(str(path), f"unreadable reference log-probs ({e})",
                              "recompute them with packer.hf.reference_logps") from None
        if seal != ds.manifest.get("manifest_sha256", ""):
            raise FormatError(str(path), "these reference log-probs belong to another run (shards seal differs)",
                              "recompute them with packer.hf.reference_logps for this run")
        if self.logp.ndim != 2 or self.logp.shape[1] != MAX_ROLE + 1 or count.shape != self.logp.shape:
            raise FormatError(str(path), f"arrays of shape {self.logp.shape}, expected [records, {MAX_ROLE + 1}]",
                              "recompute them with packer.hf.reference_logps")

    def __call__(self, batch: dict) -> torch.Tensor:
        e = batch["pair_index"].clamp(min=0).numpy()
        r = batch["segment_role"].clamp(min=0).numpy()
        out = self.logp[e, r]
        need = (batch["pair_index"] >= 0).numpy() & np.isin(r, (1, 2, 3, 4, 5))
        if np.isnan(out[need]).any():
            raise FormatError("reference log-probs", "a row of this batch has no stored reference log-prob",
                              "recompute them with packer.hf.reference_logps for this run")
        return torch.from_numpy(np.nan_to_num(out)).float()


def preference_loss(batch: dict, logps: torch.Tensor, counts: torch.Tensor, ref: torch.Tensor | None, loss: str,
                    **kw) -> torch.Tensor:
    """The sum over this batch's pairs (or KTO completions) of the per-pair loss `loss`."""
    if loss == "kto":
        rows, kl = P.unpaired(batch)
        if ref is None:
            raise ConfigError("kto needs reference log-probs: pass ref_model= or ref_logps=")
        label = batch["label"].to(logps.device)
        return P.kto(logps[rows], ref[rows], logps[kl], ref[kl], label[rows], **kw).sum()
    c, r = P.pairs(batch)
    if loss in ("simpo", "orpo"):
        fn = P.simpo if loss == "simpo" else P.orpo
        return fn(logps[c], logps[r], counts[c], counts[r], **kw).sum()
    if ref is None:
        raise ConfigError(f"{loss} needs reference log-probs: pass ref_model= or ref_logps=")
    if loss == "ipo":
        kw = dict(kw, nc=counts[c], nr=counts[r])
    return P.dpo(logps[c], logps[r], ref[c], ref[r], loss_type="sigmoid" if loss == "dpo" else loss, **kw).sum()


@functools.cache
def _trainer_class():
    import transformers

    class PreferenceTrainer(transformers.Trainer):
        """transformers.Trainer over a preference run (module docstring). loss: dpo, ipo, hinge, robust, simpo,
        orpo or kto; loss_kwargs go to that loss (beta=, gamma=, label_smoothing=, ...)."""

        loss_is_scaled_for_ga = True  # normalized by the step's global_num_pairs in compute_loss

        def __init__(self, *args, run: str | Path, ref_model=None, ref_logps: str | Path | None = None,
                     loss: str = "dpo", loss_kwargs: dict | None = None, **kwargs):
            if loss not in LOSSES:
                raise ConfigError(f"loss '{loss}' is not one of {', '.join(LOSSES)}")
            if ref_model is not None and ref_logps is not None:
                raise ConfigError("pass ref_model= or ref_logps=, not both")
            for key in ("train_dataset", "data_collator"):
                if kwargs.get(key) is not None:
                    raise ConfigError(f"PreferenceTrainer reads its batches from run=; drop {key}=")
            super().__init__(*args, **kwargs)
            self.run, self.loss_name, self.loss_kwargs = run, loss, dict(loss_kwargs or {})
            self.ref_model = ref_model
            self.ref_logps = ReferenceLogps(ref_logps, run) if ref_logps is not None else None
            if ref_model is not None:
                ref_model.eval()
                for p in ref_model.parameters():
                    p.requires_grad_(False)

        def get_train_dataloader(self):
            a = self.args
            return PackedLoader(self.run, a.per_device_train_batch_size, rank=a.process_index, world_size=a.world_size,
                                seed=a.seed, drop_last=a.dataloader_drop_last)

        def _get_num_items_in_batch(self, batch_samples: list, device):
            return sum(int(b["global_num_pairs"]) for b in batch_samples)

        def _prepare_inputs(self, inputs):
            return inputs  # moved to the model's device in model_logps

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not num_items_in_batch:
                raise ConfigError("PreferenceTrainer needs the step's global_num_pairs (batches from run=)")
            logps, counts = model_logps(model, inputs)
            if self.ref_logps is not None:
                ref = self.ref_logps(inputs).to(logps.device)
            elif self.ref_model is not None:
                with torch.no_grad():
                    ref, _ = model_logps(self.ref_model, inputs)
            else:
                ref = None
            loss = preference_loss(inputs, logps, counts, ref, self.loss_name, **self.loss_kwargs)
            loss = loss * self.accelerator.num_processes / num_items_in_batch  # DDP averages over ranks
            return (loss, {"logps": logps}) if return_outputs else loss

    return PreferenceTrainer


def __getattr__(name: str):
    if name == "PreferenceTrainer":  # transformers is imported only when the trainer is asked for
        return _trainer_class()
    raise AttributeError(name)
