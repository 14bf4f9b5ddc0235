"""Losses over packed batches that stay correct under gradient accumulation and data parallelism.

Both take labels in the loader's convention (`label_mode`) and a normalizer: pass the batch's
`global_num_loss_tokens` (summed over the micro-batches of one optimizer step) and sum, not average,
gradients across micro-batches and ranks; the result equals the loss over the whole global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from packer.core.labels import IGNORE, check_label_mode
from packer.train.preference import sequence_logps  # noqa: F401  (packer.loss's short path names it)


def _aligned(logits: torch.Tensor, labels: torch.Tensor, label_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (tokens, vocab) logits and (tokens,) targets, shifting when the labels are unshifted."""
    if label_mode == "unshifted":
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    else:
        check_label_mode(label_mode)
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)


def _target_segments(labels: torch.Tensor, cu_seqlens: torch.Tensor, label_mode: str) -> torch.Tensor:
    """Per target of _aligned's flat labels, the segment of cu_seqlens it is charged to: the segment it
    lies in (unshifted targets sit on the predicted token)."""
    seg = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1, device=labels.device),
                                  (cu_seqlens[1:] - cu_seqlens[:-1]).long(), output_size=labels.numel())
    seg = seg.view(labels.shape)
    return (seg[..., 1:] if label_mode == "unshifted" else seg).reshape(-1)


def token_mean_loss(logits: torch.Tensor, labels: torch.Tensor, num_loss_tokens: int | torch.Tensor | None = None,
                    *, label_mode: str = "unshifted") -> torch.Tensor:
    """Sum of token cross-entropies / num_loss_tokens (default: the labelled tokens in this batch)."""
    flat_logits, flat_labels = _aligned(logits, labels, label_mode)
    total = F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=IGNORE, reduction="sum")
    n = (flat_labels != IGNORE).sum() if num_loss_tokens is None else num_loss_tokens
    return total / n


def example_mean_loss(logits: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor,
                      num_examples: int | torch.Tensor | None = None, *, label_mode: str = "unshifted") -> torch.Tensor:
    """Mean over examples of each example's token-mean loss (every example weighs the same, however long).

    cu_seqlens: int32 over the flattened batch; segments without labels (padding) do not count.
    num_examples: the normalizer (default: labelled examples in this batch).
    """
    seg = _target_segments(labels, cu_seqlens, label_mode)
    flat_logits, flat_labels = _aligned(logits, labels, label_mode)
    per_token = F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=IGNORE, reduction="none")
    has = (flat_labels != IGNORE).to(per_token.dtype)
    nseg = len(cu_seqlens) - 1
    sums = torch.zeros(nseg, dtype=per_token.dtype, device=per_token.device).index_add(0, seg, per_token)
    counts = torch.zeros(nseg, dtype=per_token.dtype, device=per_token.device).index_add(0, seg, has)
    labelled = counts > 0
    means = sums[labelled] / counts[labelled]
    n = labelled.sum() if num_examples is None else num_examples
    return means.sum() / n


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor,
                     example_index: torch.Tensor, *, label_mode: str = "unshifted"
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per example of an eval batch: (example_index int64 [E], summed token loss float64 [E], targets
    int64 [E]), from the batch's example_index (per segment; PackedLoader(eval=True)). An example split over several
    segments or batches is summed under its one index: merge the parts with `mean_example_loss`."""
    seg = _target_segments(labels, cu_seqlens, label_mode)
    flat_logits, flat_labels = _aligned(logits, labels, label_mode)
    per_token = F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=IGNORE, reduction="none").double()
    has = (flat_labels != IGNORE).long()
    ex = example_index.to(labels.device)[seg]
    keep = (ex >= 0) & (has > 0)
    ids, where = torch.unique(ex[keep], return_inverse=True)
    sums = torch.zeros(len(ids), dtype=torch.float64, device=labels.device).index_add(0, where, per_token[keep])
    counts = torch.zeros(len(ids), dtype=torch.int64, device=labels.device).index_add(0, where, has[keep])
    return ids, sums, counts


def mean_example_loss(example_index: torch.Tensor, loss_sum: torch.Tensor, count: torch.Tensor,
                      groups: torch.Tensor | None = None) -> dict:
    """Merge per_example_loss parts (concatenated over batches, and over ranks after an all_gather):
    {"loss": mean over examples of each example's token-mean loss, "examples": E, "token_loss": summed
    loss / targets} and, with `groups` (a group per example index, such as its source:
    `example_sources`), the same per group under "by_group"."""
    ids, where = torch.unique(example_index, return_inverse=True)
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add(0, where, loss_sum.double().cpu())
    counts = torch.zeros(len(ids), dtype=torch.int64).index_add(0, where, count.cpu())
    means = sums / counts
    out = {"loss": float(means.mean()) if len(ids) else float("nan"), "examples": len(ids),
           "token_loss": float(sums.sum() / counts.sum()) if len(ids) else float("nan")}
    if groups is not None:
        g = groups[ids]
        out["by_group"] = {int(k): {"loss": float(means[g == k].mean()), "examples": int((g == k).sum())}
                           for k in torch.unique(g).tolist()}
    return out


def example_sources(manifest: dict) -> torch.Tensor:
    """int64 [records]: the source (position among the run's inputs, as given) of every record number,
    from a shards manifest (PackedShards(...).manifest): records are numbered file by file."""
    inputs = manifest.get("inputs") or []
    counts = torch.tensor([int(i.get("records", 0)) for i in inputs], dtype=torch.int64)
    source = torch.tensor([int(i.get("source", 0)) for i in inputs], dtype=torch.int64)
    return torch.repeat_interleave(source, counts)

