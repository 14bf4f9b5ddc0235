"""Preference optimization on packed batches: sequence log-probabilities per segment and the losses, exact.

A preference run's batches (PackedLoader over a `--kind preference` run) carry per segment of cu_seqlens:
pair_index (the record number; -1 for padding), segment_role (packer.core.roles), is_chosen, label (KTO:
desirable) and prompt_segment (shared-prompt layout: the segment a reply continues; -1 otherwise), plus
num_pairs (this batch) and global_num_pairs (every rank, every micro-batch of this optimizer step).

    logps, n = sequence_logps(logits, batch["labels"], batch["cu_seqlens"], prompt_segment=batch["prompt_segment"])
    c, r = pairs(batch)                                   # segment indices of each pair's chosen and rejected
    per_pair = dpo(logps[c], logps[r], ref[c], ref[r], beta=0.1)
    loss = per_pair.sum() / batch["global_num_pairs"]     # exact under packing, accumulation and ranks

Normalization (DECISIONS): the sum of per-pair losses over the global step divided by global_num_pairs;
length-normalized losses (IPO, SimPO, ORPO) use each segment's own trained-token count, never the packed
row's length. TRL's trainers take a mean per micro-batch instead, which changes the loss when micro-batches
hold different numbers of pairs; with equal micro-batches both agree (tests/train/test_preference.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from packer.core.errors import ConfigError
from packer.core.labels import IGNORE
from packer.core.roles import CHOSEN, DESIRABLE, KL, PROMPT, REJECTED, UNDESIRABLE

UNIT_ROLES = (CHOSEN, DESIRABLE, UNDESIRABLE)
"""The role that counts one unit (a pair, or an unpaired completion) toward num_pairs."""


def segment_fields(ds, packs: np.ndarray, flatten: bool) -> dict[str, np.ndarray]:
    """Per segment of a batch's cu_seqlens (row padding segments included, as collate makes them): pair_index,
    segment_role, prompt_segment and first_trained (its first token's loss-mask byte); from the shards, one read
    of each pack's metadata (numpy, no torch)."""
    ex, role, first = [], [], []
    for p in packs.tolist():
        v = ds.arrays(p)
        lens = np.asarray(v["seg_lens"], np.int64)
        ex.append(v["example_index"].astype(np.int64))
        role.append(np.asarray(v["role"], np.int64))
        first.append(np.asarray(v["loss_mask"])[np.cumsum(lens) - lens].astype(bool))
        if not flatten and int(lens.sum()) < ds.pack_len:
            ex.append(np.full(1, -1, np.int64))
            role.append(np.full(1, -1, np.int64))
            first.append(np.zeros(1, bool))
    ex = np.concatenate(ex) if ex else np.zeros(0, np.int64)
    role = np.concatenate(role) if role else np.zeros(0, np.int64)
    first = np.concatenate(first) if first else np.zeros(0, bool)
    prompt = np.full(len(role), -1, np.int64)
    is_prompt = role == PROMPT
    if is_prompt.any():
        last = np.maximum.accumulate(np.where(is_prompt, np.arange(len(role)), -1))
        follows = (~is_prompt) & (last >= 0) & (role > 0)
        follows &= ex == ex[np.maximum(last, 0)]
        prompt[follows] = last[follows]
    return {"pair_index": ex, "segment_role": role, "prompt_segment": prompt, "first_trained": first}


def mark(batch: dict, ds, packs: np.ndarray, flatten: bool, global_pairs: int) -> None:
    """Add the preference fields (module docstring) to a collated batch; in the shared-prompt layout, make
    each reply continue its prompt: positions from the prompt's length, and its first token trained (it is
    predicted from the prompt's last token: sequence_logps does that with prompt_segment)."""
    f = segment_fields(ds, packs, flatten)
    role = f["segment_role"]
    cu = batch["cu_seqlens"].numpy().astype(np.int64)
    prompt = f["prompt_segment"]
    replies = np.flatnonzero(prompt >= 0)
    if len(replies):
        if ds.label_mode != "unshifted":
            raise ConfigError("the shared-prompt layout needs label_mode='unshifted': both replies' first tokens "
                              "are predicted from the prompt's last token, which a shifted label cannot say twice")
        pos = batch["position_ids"].view(-1)
        ids = batch["input_ids"].view(-1)
        labels = batch["labels"].view(-1)
        starts = cu[replies]
        plen = torch.from_numpy(cu[prompt[replies] + 1] - cu[prompt[replies]])
        lens = torch.from_numpy(cu[replies + 1] - starts)
        at = torch.from_numpy(starts)
        offset = torch.repeat_interleave(plen, lens)
        index = torch.repeat_interleave(at, lens) + _within(lens)
        pos[index] += offset
        mask = f["first_trained"][replies]
        first = at[torch.from_numpy(mask)]
        labels[first] = ids[first]
        batch["num_loss_tokens"] = int(batch["num_loss_tokens"]) + int(mask.sum())
    batch["pair_index"] = torch.from_numpy(f["pair_index"])
    batch["segment_role"] = torch.from_numpy(role)
    batch["prompt_segment"] = torch.from_numpy(prompt)
    batch["is_chosen"] = torch.from_numpy(role == CHOSEN)
    batch["label"] = torch.from_numpy(role == DESIRABLE)
    batch["num_pairs"] = int(np.isin(role, UNIT_ROLES).sum())
    batch["global_num_pairs"] = int(global_pairs)


def _within(lens: torch.Tensor) -> torch.Tensor:
    """0..n-1 for each n of lens, concatenated."""
    total = int(lens.sum())
    starts = torch.cumsum(lens, 0) - lens
    return torch.arange(total) - torch.repeat_interleave(starts, lens)


def pair_counts(ds) -> np.ndarray:
    """int64 [packs]: units (pairs and unpaired completions) in each pack, for global_num_pairs (whole shards at a
    time, as loader.loss_counts counts loss tokens)."""
    parts = [np.add.reduceat(np.isin(sh.segment_role, UNIT_ROLES).astype(np.int64), sh.pack_segment_offsets[:-1])
             for sh in ds.shards if sh.num_packs]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor, *,
                   prompt_segment: torch.Tensor | None = None, label_mode: str = "unshifted"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per segment of cu_seqlens: the summed log-probability of its trained tokens (float32 [K]) and how many
    there are (int64 [K]); float32, or float64 for float64 logits. logits [B, T, V] or [1, T, V] and labels in the loader's convention (label_mode);
    prompt_segment (the batch's, shared-prompt layout): a reply's first token is scored from its prompt's
    last position, as if the reply followed the prompt directly."""
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    lab = labels.reshape(-1)
    T = lab.numel()
    cu = cu_seqlens.to(lab.device).long()
    seg = torch.repeat_interleave(torch.arange(len(cu) - 1, device=lab.device), cu[1:] - cu[:-1], output_size=T)
    if label_mode == "unshifted":
        src = torch.arange(T, device=lab.device) - 1  # the position whose logits predict token t
        if prompt_segment is not None:
            ps = prompt_segment.to(lab.device).long()
            replies = torch.nonzero(ps >= 0).flatten()
            src[cu[replies]] = cu[ps[replies] + 1] - 1
        target = lab
    elif label_mode == "shifted":
        if prompt_segment is not None and bool((prompt_segment >= 0).any()):
            raise ConfigError("the shared-prompt layout needs label_mode='unshifted'")
        src = torch.arange(T, device=lab.device)
        target = lab
    else:
        raise ConfigError(f"label_mode '{label_mode}' is not one of unshifted, shifted")
    keep = (target != IGNORE) & (src >= 0)
    rows = src[keep]
    picked = flat[rows]
    if picked.dtype in (torch.float16, torch.bfloat16):  # half-precision logits: the softmax in float32
        picked = picked.float()
    lp = torch.log_softmax(picked, dim=-1).gather(1, target[keep][:, None]).squeeze(1)
    K = len(cu) - 1
    # shifted labels sit on the predicting position: the target belongs to the segment of that position
    where = seg[keep]
    sums = torch.zeros(K, dtype=lp.dtype, device=lp.device).index_add(0, where, lp)
    counts = torch.zeros(K, dtype=torch.int64, device=lp.device).index_add(0, where, torch.ones_like(where))
    return sums, counts


def pairs(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment indices (into cu_seqlens' segments) of each pair's chosen and rejected reply, in batch order:
    a pair's rejected is the segment right after its chosen (packer.build.preference keeps them adjacent)."""
    role = batch["segment_role"]
    chosen = torch.nonzero(role == CHOSEN).flatten()
    rejected = chosen + 1
    if len(chosen) and (int(rejected.max()) >= len(role) or bool((role[rejected] != REJECTED).any())):
        raise ConfigError("a chosen segment is not followed by its rejected one: these shards are not a preference run")
    return chosen, rejected


def unpaired(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO: segment indices of each completion and of its mismatched (KL) row, in batch order."""
    role = batch["segment_role"]
    rows = torch.nonzero((role == DESIRABLE) | (role == UNDESIRABLE)).flatten()
    kl = rows + 1
    if len(rows) and (int(kl.max()) >= len(role) or bool((role[kl] != KL).any())):
        raise ConfigError("a KTO completion is not followed by its KL row: these shards are not an unpaired run")
    return rows, kl


# Per-pair losses. pc, pr: policy sequence log-probs of chosen and rejected; rc, rr: the reference's;
# nc, nr: trained-token counts. Each returns a loss per pair: sum them and divide by global_num_pairs.

def dpo(pc, pr, rc, rr, *, beta: float = 0.1, loss_type: str = "sigmoid", nc=None, nr=None,
        label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO's family: sigmoid -log σ(β Δ), hinge relu(1 - β Δ), ipo (Δ̄ - 1/(2β))² with each log-ratio divided by
    its own reply's token count (nc, nr), where Δ = (pc - rc) - (pr - rr). label_smoothing is refused for
    sigmoid (TRL's sigmoid ignores it; use 'robust')."""
    chosen, rejected = pc - rc, pr - rr
    if loss_type == "sigmoid":
        if label_smoothing:
            raise ConfigError("label_smoothing with loss_type='sigmoid' is not implemented (use loss_type='robust')")
        return -F.logsigmoid(beta * (chosen - rejected))
    if loss_type == "robust":
        d = beta * (chosen - rejected)
        e = label_smoothing
        return (-(1 - e) * F.logsigmoid(d) + e * F.logsigmoid(-d)) / (1 - 2 * e)
    if loss_type == "hinge":
        return torch.relu(1 - beta * (chosen - rejected))
    if loss_type == "ipo":
        if nc is None or nr is None:
            raise ConfigError("ipo needs each reply's token count: pass nc= and nr= from sequence_logps")
        return (chosen / nc.clamp(min=1) - rejected / nr.clamp(min=1) - 1 / (2 * beta)) ** 2
    raise ConfigError(f"dpo loss_type '{loss_type}' is not one of sigmoid, robust, hinge, ipo")


def simpo(pc, pr, nc, nr, *, beta: float = 2.0, gamma: float = 0.5) -> torch.Tensor:
    """SimPO: -log σ(β (pc/nc - pr/nr) - γ); reference-free, each reply's mean log-prob over its own tokens."""
    return -F.logsigmoid(beta * (pc / nc.clamp(min=1) - pr / nr.clamp(min=1)) - gamma)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0, stably."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo(pc, pr, nc, nr, *, beta: float = 0.1) -> torch.Tensor:
    """ORPO per pair: the chosen reply's mean NLL - β log σ(log-odds ratio), with mean log-probs over each
    reply's own tokens. (TRL's ORPOTrainer pools its NLL term as a token mean over the micro-batch's chosen
    sequences, prompt included; here it is per pair over the reply, so it normalizes exactly under packing.)"""
    mc, mr = pc / nc.clamp(min=1), pr / nr.clamp(min=1)
    log_odds = (mc - mr) - (_log1mexp(mc) - _log1mexp(mr))
    return -mc - beta * F.logsigmoid(log_odds)


def kto(logp, ref, kl_logp, kl_ref, desirable, *, beta: float = 0.1, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0, kl: torch.Tensor | float | None = None) -> torch.Tensor:
    """KTO per completion: desirable w_D (1 - σ(β (lr - z))), undesirable w_U (1 - σ(β (z - lr))), lr = logp - ref.
    z, the KL reference point (no gradient, at least 0): `kl` when given (e.g. a mean all-reduced over the
    step's KL rows); else each completion's own mismatched row fixed at pack time, clamp(kl_logp - kl_ref, 0),
    so it never depends on which completions share a micro-batch."""
    lr = logp - ref
    z = (kl_logp - kl_ref).detach().clamp(min=0) if kl is None else torch.as_tensor(kl, dtype=lr.dtype).detach()
    good = desirable_weight * (1 - torch.sigmoid(beta * (lr - z)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z - lr)))
    return torch.where(desirable, good, bad)


def bradley_terry(rc, rr, *, margin=None, center_coefficient: float | None = None) -> torch.Tensor:
    """Reward-model pairs: -log σ(rc - rr - margin) (+ c (rc + rr)², TRL's center_rewards_coefficient), per
    pair, from the scores of each chosen and rejected segment (e.g. the last token's, `last_token_scores`)."""
    d = rc - rr - (0 if margin is None else margin)
    out = -F.logsigmoid(d)
    if center_coefficient:
        out = out + center_coefficient * (rc + rr) ** 2
    return out


def last_token_scores(scores: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """A reward head's per-token scores [B, T] (or [1, T]) -> each segment's score at its last token [K]."""
    flat = scores.reshape(-1)
    return flat[cu_seqlens[1:].long().to(flat.device) - 1]


def shared_prompt_mask(batch: dict, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The attention a shared-prompt batch needs, as a mask [B, 1, L, L] for a Hugging Face model's
    attention_mask: causal within each segment, and each reply also sees its whole prompt (not the other
    reply). bool (True: may attend) for sdpa; with dtype, additive (0 or the dtype's lowest) as eager attention
    takes it. For pairs-layout batches it is the block-diagonal causal mask of cu_seqlens. Memory is L x L
    per row: for long packs use a FlexAttention block mask built from the same rule."""
    ids = batch["input_ids"]
    B, L = ids.shape
    cu = batch["cu_seqlens"].long()
    T = B * L
    seg = torch.repeat_interleave(torch.arange(len(cu) - 1), cu[1:] - cu[:-1], output_size=T).view(B, L)
    prompt = batch.get("prompt_segment")
    parent = prompt[seg] if prompt is not None else torch.full_like(seg, -1)
    q_seg, k_seg = seg[:, :, None], seg[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool).tril()[None]
    same = (q_seg == k_seg) & causal
    sees_prompt = parent[:, :, None] == k_seg
    allowed = (same | sees_prompt)[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
