"""Hugging Face transformers integration (extra `hf`): attn_implementation="packer" and batch helpers.

`register()` adds "packer" to transformers' attention interface: every layer's attention runs through
`varlen_attention` over the packed examples, found from `cu_seq_lens_q` when the caller passes it
(what `batch_to_kwargs` does) or else from `position_ids` restarting at 0 (the padding-free
convention). Verified equal to unpacked training in tests: Llama, Mistral, Qwen2.
"""

from __future__ import annotations

import torch

from packer.attention import cu_seqlens_from_positions, varlen_attention

NAME = "packer"
VERIFIED_FAMILIES = ("llama", "mistral", "qwen2")


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ImportError("packer.hf needs transformers: pip install 'packer[hf]'") from None


def packer_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function: query (B, H, S, D), key/value (B, H_kv, S, D) -> (B, S, H, D)."""
    if dropout:
        raise ValueError("packer attention does not implement attention dropout; set attention_dropout=0")
    if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
        raise ValueError("packer attention takes packed batches without padding masks: pass position_ids "
                         "(restarting at 0 per example) or cu_seq_lens_q, and no attention_mask")
    b, h, s, d = query.shape
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        max_len = int(kwargs.get("max_length_q") or (cu[1:] - cu[:-1]).max())
    elif kwargs.get("position_ids") is not None:
        cu, max_len = cu_seqlens_from_positions(kwargs["position_ids"])
    else:
        cu = torch.arange(0, (b + 1) * s, s, device=query.device, dtype=torch.int32)
        max_len = s
    q, k, v = (t.transpose(1, 2).reshape(b * s, t.shape[1], t.shape[3]) for t in (query, key, value))
    out = varlen_attention(q, k, v, cu.to(query.device), max_len, causal=getattr(module, "is_causal", True),
                           softmax_scale=scaling)
    return out.view(b, s, h, -1), None


def register() -> None:
    """Make attn_implementation="packer" available to every transformers model that uses the interface."""
    _require_transformers()
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(NAME, packer_attention)
    # Like flash attention, packer needs no dense mask: None when unpadded, the 2D mask otherwise.
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)


def use_packer_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a loaded transformers model to Packer's attention (registers it first)."""
    register()
    model.set_attn_implementation(NAME)
    return model


def batch_to_kwargs(batch: dict, *, flatten_padded: bool = False) -> dict:
    """Model kwargs from a PackedLoader batch: ids, position_ids, labels and the varlen boundaries.

    The labels are in the loader's convention; transformers' causal LMs expect `unshifted`. A padded
    [B, pack_len] batch is passed as it is: its cu_seqlens cover the rows flattened, padding included
    as inert segments.
    """
    cu = batch["cu_seqlens"]
    return {
        "input_ids": batch["input_ids"],
        "position_ids": batch["position_ids"],
        "labels": batch["labels"],
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": int(batch["max_seqlen"]),
        "max_length_k": int(batch["max_seqlen"]),
    }


class PackedCollator:
    """`Trainer` data collator: a list of packs (PackedShards / pack_dataset items) or of plain
    examples ({input_ids, labels?}) -> one padding-free row [1, total] with position_ids restarting
    per example, labels -100 at every example's first token, no attention mask, and the varlen
    boundaries. Trainer's num_items_in_batch (labels != -100) then counts exactly the targets.
    """

    def __call__(self, features: list[dict]) -> dict:
        ids, pos, labels, bounds = [], [], [], [0]
        for f in features:
            x = torch.as_tensor(f["input_ids"], dtype=torch.long)
            if "cu_seqlens" in f:
                cu = torch.as_tensor(f["cu_seqlens"], dtype=torch.long)
                p = torch.as_tensor(f["position_ids"], dtype=torch.long)
                y = torch.as_tensor(f["labels"], dtype=torch.long)
            else:  # one plain example
                cu = torch.tensor([0, len(x)])
                p = torch.arange(len(x))
                y = torch.as_tensor(f.get("labels", x), dtype=torch.long).clone()
                y[0] = -100
            if len(y) and bool((y[cu[:-1]] != -100).any()):
                raise ValueError("PackedCollator needs unshifted labels (-100 at each example's first token); "
                                 "use PackedShards(..., label_mode='unshifted')")
            ids.append(x)
            pos.append(p)
            labels.append(y)
            bounds.extend((cu[1:] + bounds[-1]).tolist())
        cu_all = torch.tensor(bounds, dtype=torch.int32)
        max_len = int((cu_all[1:] - cu_all[:-1]).max()) if len(cu_all) > 1 else 0
        return {"input_ids": torch.cat(ids)[None], "position_ids": torch.cat(pos)[None],
                "labels": torch.cat(labels)[None], "cu_seq_lens_q": cu_all, "cu_seq_lens_k": cu_all,
                "max_length_q": max_len, "max_length_k": max_len}
