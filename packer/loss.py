"""Losses over packed batches that stay correct under gradient accumulation and data parallelism.

Both take labels in the loader's convention (`label_mode`) and a normalizer: pass the batch's
`global_num_loss_tokens` (summed over the micro-batches of one optimizer step) and sum, not average,
gradients across micro-batches and ranks; the result equals the loss over the whole global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from packer.labels import IGNORE, check_label_mode


def _aligned(logits: torch.Tensor, labels: torch.Tensor, label_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (tokens, vocab) logits and (tokens,) targets, shifting when the labels are unshifted."""
    if label_mode == "unshifted":
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    else:
        check_label_mode(label_mode)
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)


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
    seg = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1, device=labels.device),
                                  (cu_seqlens[1:] - cu_seqlens[:-1]).long(), output_size=labels.numel())
    seg = seg.view(labels.shape)
    # Each target is charged to the segment it lies in: unshifted targets sit on the predicted token.
    seg = (seg[..., 1:] if label_mode == "unshifted" else seg).reshape(-1)
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
