"""`PackedLoader`: batches of packs for a training loop, deterministic, rank-aware and resumable.

Epoch order is a pure function of (seed, epoch). Each step takes batch_size x world_size packs;
within the step they are dealt to ranks in a snake order of decreasing cost (tokens, or attention
cost = sum of squared segment lengths), mirrored on odd steps, so every rank gets batch_size packs
and nearly the same work in every step and over the epoch.

A padded batch of 2 packs at pack_len 6 (segments a a a | b b in row 0, c c c c in row 1)::

    input_ids     a a a b b P        P = pad_id
                  c c c c P P
    position_ids  0 1 2 0 1 0        padding is its own segment per row, so the batch flattened to
                  0 1 2 3 0 1        [B * pack_len] is valid varlen input as it is:
    cu_seqlens    [0, 3, 5, 6, 10, 12]   (int32, over the flattened rows)
    labels        -100 on padding and wherever the pack has no loss

flatten=True gives one row [1, total_tokens] with no padding at all (positions restart per example).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from packer.dataset import PackedShards, count_labels, make_labels, positions
from packer.errors import ConfigError

BALANCE = ("tokens", "attention")


def pack_costs(ds: PackedShards, balance: str) -> np.ndarray:
    """float64 [P]: the work of each pack: its tokens, or its attention cost (sum of squared lengths)."""
    if balance not in BALANCE:
        raise ConfigError(f"balance '{balance}' is not one of {', '.join(BALANCE)}")
    parts = []
    for sh in ds.shards:
        if balance == "tokens":
            parts.append(np.diff(sh.pack_token_offsets).astype(np.float64))
        else:
            sq = sh.segment_lengths.astype(np.float64) ** 2
            parts.append(np.add.reduceat(sq, sh.pack_segment_offsets[:-1]) if sh.num_packs else sq[:0])
    return np.concatenate(parts) if parts else np.zeros(0)


def loss_counts(ds: PackedShards) -> np.ndarray:
    """int64 [P]: positions with a label in each pack (the same for both label modes)."""
    parts = []
    for sh in ds.shards:
        if not sh.num_packs:
            continue
        seg_start = np.concatenate([[0], np.cumsum(sh.segment_lengths[:-1], dtype=np.int64)])
        per_seg_first = sh.loss_mask[seg_start].astype(np.int64)
        total = np.add.reduceat(sh.loss_mask.astype(np.int64), sh.pack_token_offsets[:-1])
        firsts = np.add.reduceat(per_seg_first, sh.pack_segment_offsets[:-1])
        parts.append(total - firsts)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def epoch_plan(costs: np.ndarray, batch_size: int, world_size: int, seed: int, epoch: int,
               shuffle: bool = True, drop_last: bool = True) -> np.ndarray:
    """int64 [world_size, steps, batch_size]: the packs every rank reads at every step of an epoch.

    drop_last=False completes the last step by repeating packs from the start of the epoch order
    (as torch's DistributedSampler does), so every rank runs the same number of steps.
    """
    n = len(costs)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    g = batch_size * world_size
    steps = n // g if drop_last else -(-n // g)
    if steps == 0:
        return np.zeros((world_size, 0, batch_size), np.int64)
    packs = np.resize(order, steps * g).reshape(steps, g)
    by_cost = np.argsort(-costs[packs], axis=1, kind="stable")
    packs = np.take_along_axis(packs, by_cost, axis=1)
    j = np.arange(g)
    lap, pos = j // world_size, j % world_size
    rank = np.where(lap % 2 == 0, pos, world_size - 1 - pos)  # snake: 0..W-1, W-1..0, ...
    # Odd steps mirror the ranks, so the rank dealt the heaviest pack first does not get it every step.
    ranks = np.where((np.arange(steps) % 2 == 1)[:, None], world_size - 1 - rank[None, :], rank[None, :])
    out = np.empty((world_size, steps, batch_size), np.int64)
    out[ranks, np.arange(steps)[:, None], lap[None, :]] = packs
    return out


def imbalance(costs: np.ndarray, plan: np.ndarray) -> dict[str, float]:
    """How unequal the ranks' work is: per step (max / mean - 1, averaged and worst) and per epoch."""
    if plan.shape[1] == 0:
        return {"step_mean": 0.0, "step_max": 0.0, "epoch": 0.0}
    load = costs[plan].sum(axis=2)  # [W, steps]
    per_step = load.max(axis=0) / load.mean(axis=0) - 1
    total = load.sum(axis=1)
    return {"step_mean": float(per_step.mean()), "step_max": float(per_step.max()),
            "epoch": float(total.max() / total.mean() - 1)}


def collate(ds: PackedShards, packs: np.ndarray, flatten: bool, pad_id: int) -> dict:
    """One batch from pack indices. Each pack's tokens are copied once, from the memory map straight
    into the batch array; labels and positions are whole-batch array operations."""
    views = [ds.arrays(i) for i in packs.tolist()]
    L = ds.pack_len
    if flatten:
        ids = np.concatenate([v["tokens"] for v in views], dtype=np.int64)
        mask = np.concatenate([v["loss_mask"] for v in views])
        seg_all = np.concatenate([v["seg_lens"] for v in views], dtype=np.int64)
        shape = (1, len(ids))
        num_tokens = len(ids)
    else:
        ids = np.empty((len(views), L), dtype=np.int64)
        mask = np.empty((len(views), L), dtype=np.uint8)
        seg: list[int] = []
        num_tokens = 0
        # One iteration per pack in the batch (batch_size of them): a row copy each.
        for r, v in enumerate(views):
            n = len(v["tokens"])
            ids[r, :n] = v["tokens"]
            mask[r, :n] = v["loss_mask"]
            seg.extend(v["seg_lens"].tolist())
            if n < L:
                ids[r, n:] = pad_id
                mask[r, n:] = 0
                seg.append(L - n)
            num_tokens += n
        ids, mask = ids.reshape(-1), mask.reshape(-1)
        seg_all = np.asarray(seg, dtype=np.int64)
        shape = (len(views), L)
    cu = np.zeros(len(seg_all) + 1, dtype=np.int64)
    np.cumsum(seg_all, out=cu[1:])
    labels = make_labels(ids, mask, cu, ds.label_mode)
    return {
        "input_ids": torch.from_numpy(ids).view(shape),
        "labels": torch.from_numpy(labels).view(shape),
        "position_ids": torch.from_numpy(positions(seg_all, cu)).view(shape),
        "cu_seqlens": torch.from_numpy(cu.astype(np.int32)),
        "seq_lens": torch.from_numpy(seg_all.astype(np.int32)),
        "max_seqlen": int(seg_all.max()) if len(seg_all) else 0,
        "num_loss_tokens": count_labels(mask, cu),
        "num_tokens": num_tokens,
        "pack_index": torch.from_numpy(np.asarray(packs, dtype=np.int64)),
    }


class _Batches(torch.utils.data.Dataset):
    """Map-style view of one epoch's batches for this rank: item i builds batch i."""

    def __init__(self, ds: PackedShards, plan: np.ndarray, global_loss: np.ndarray, flatten: bool, pad_id: int):
        self.ds, self.plan, self.global_loss = ds, plan, global_loss
        self.flatten, self.pad_id = flatten, pad_id

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> dict:
        batch = collate(self.ds, self.plan[i], self.flatten, self.pad_id)
        batch["global_num_loss_tokens"] = int(self.global_loss[i])
        return batch


class _From(torch.utils.data.Sampler):
    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class PackedLoader:
    """Batches of packs from a shards (or run) folder, as dicts of torch tensors.

    Each batch: input_ids, labels, position_ids ([B, pack_len], or [1, total] with flatten=True),
    cu_seqlens int32 [K+1], seq_lens int32 [K], max_seqlen, num_loss_tokens (this rank's labelled
    positions), global_num_loss_tokens (summed over all ranks for this step, known without any
    communication because every rank's plan is deterministic), num_tokens (real tokens) and
    pack_index int64 [B] (which packs of the shards these are).

    Normalize a token-mean loss by global_num_loss_tokens (summed over the micro-batches of an
    optimizer step under gradient accumulation) and sum gradients across ranks.
    """

    def __init__(self, path: str | Path, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, num_workers: int = 0, pin_memory: bool = False,
                 flatten: bool = False, label_mode: str = "unshifted", pad_id: int | None = None,
                 balance: str = "tokens", verify: bool = True):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"need batch_size >= 1 and 0 <= rank < world_size; got batch_size={batch_size}, "
                              f"rank={rank}, world_size={world_size}")
        self.dataset = PackedShards(path, label_mode=label_mode, verify=verify and rank == 0)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.num_workers, self.pin_memory, self.flatten = num_workers, pin_memory, flatten
        self.pad_id = self.dataset.manifest["tokenizer"]["eos_id"] if pad_id is None else pad_id
        self.balance = balance
        self.costs = pack_costs(self.dataset, balance)
        self._loss = loss_counts(self.dataset)
        self.epoch = 0
        self._yielded = 0  # batches of the current epoch handed to the caller
        self._plan_cache: tuple[int, np.ndarray] | None = None

    def _plan(self) -> np.ndarray:
        if self._plan_cache is None or self._plan_cache[0] != self.epoch:
            self._plan_cache = (self.epoch, epoch_plan(self.costs, self.batch_size, self.world_size, self.seed,
                                                       self.epoch, self.shuffle, self.drop_last))
        return self._plan_cache[1]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order to give; a new epoch starts from its first batch."""
        if epoch != self.epoch:
            self.epoch, self._yielded = epoch, 0

    def __len__(self) -> int:
        return self._plan().shape[1]

    def imbalance(self) -> dict[str, float]:
        """Work imbalance across ranks for the current epoch, by the balance cost."""
        return imbalance(self.costs, self._plan())

    def __iter__(self) -> Iterator[dict]:
        plan = self._plan()
        mine = plan[self.rank]
        global_loss = self._loss[plan].sum(axis=(0, 2))
        batches = _Batches(self.dataset, mine, global_loss, self.flatten, self.pad_id)
        start = self._yielded
        if self.num_workers == 0:  # no DataLoader machinery in the way: ~15 us a batch saved
            for i in range(start, len(mine)):
                batch = batches[i]
                if self.pin_memory:
                    batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                self._yielded += 1
                yield batch
            self._yielded = 0
            return
        loader = torch.utils.data.DataLoader(
            batches, batch_size=None, sampler=_From(start, len(mine)), num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=False,
            # DataLoader draws worker seeds from this generator instead of torch's global RNG.
            generator=torch.Generator().manual_seed(self.seed))
        for batch in loader:
            self._yielded += 1
            yield batch
        self._yielded = 0  # the epoch is complete; iterating again repeats it unless set_epoch moves on

    def state_dict(self) -> dict:
        """Where the loader stands: restoring it yields exactly the batches still to come."""
        return {"epoch": self.epoch, "batches_yielded": self._yielded, "seed": self.seed,
                "batch_size": self.batch_size, "world_size": self.world_size, "rank": self.rank,
                "num_packs": len(self.dataset), "shuffle": self.shuffle, "drop_last": self.drop_last,
                "balance": self.balance}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "batch_size", "world_size", "num_packs", "shuffle", "drop_last", "balance"):
            mine = len(self.dataset) if key == "num_packs" else getattr(self, key)
            if key in state and state[key] != mine:
                raise ConfigError(f"state was saved with {key}={state[key]}, this loader has {key}={mine}; "
                                  "resume with the same settings and shards")
        self.epoch = int(state["epoch"])
        self._yielded = int(state["batches_yielded"])
