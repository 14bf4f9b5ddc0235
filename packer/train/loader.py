"""`PackedLoader`: batches of packs for a training loop, deterministic, rank-aware and resumable.

Epoch order is a pure function of (seed, epoch). Each step takes batch_size x world_size packs;
within the step they are dealt to ranks in a snake order of decreasing cost (tokens, or attention
cost = sum of squared segment lengths), mirrored on odd steps, so every rank gets batch_size packs
and nearly the same work in every step and over the epoch.

Batches are built by `packer.train.collate` (its docstring draws the padded and flat layouts).
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from packer.train.collate import BatchSource, collate, defer, warm
from packer.train.reader import PackedShards
from packer.core.rangestore import DEFAULT_CACHE_LIMIT
from packer.train import preference
from packer.core.cost import CostModel
from packer.core.config import whole
from packer.core.errors import REBUILD_HINT, ConfigError, FormatError
from packer.train.prefetch import Progress
from packer.train.prefetch import prefetch as in_background
from packer.core.context_parallel import cp_indices, padded_lengths
from packer.core.labels import make_labels, positions
from packer.core.ranges import concat_ranges

BALANCE = ("tokens", "attention")


def pack_costs(ds: PackedShards, balance: str | CostModel) -> np.ndarray:
    """float64 [P]: the work of each pack: its tokens, its attention cost (sum of squared lengths), or a model's
    training FLOPs (a CostModel: a x tokens + b x sum(L^2), packer.core.cost.cost_model(config))."""
    if isinstance(balance, CostModel):
        return np.concatenate([balance(sh.segment_lengths, sh.pack_segment_offsets) for sh in ds.shards]) \
            if ds.shards else np.zeros(0)
    if balance == "compute":
        raise ConfigError("balance='compute' needs the model's cost: pass cost=packer.core.cost.cost_model(model.config) "
                          "(or cost=(a, b) for a x tokens + b x sum of squared lengths)")
    if balance == "patches":  # runs with images: each pack's vision patches (the vision encoder's work)
        if ds.images_meta is None:
            raise ConfigError("balance='patches' deals packs by their images' vision patches; this run has no images")
        out = []
        for sh, im in zip(ds.shards, ds.images):
            g = im.image_grid.reshape(-1, 3).astype(np.float64)
            per_image = g.prod(axis=1)
            per_seg = np.add.reduceat(np.concatenate([per_image, [0.0]]), im.segment_image_offsets[:-1]) * \
                (np.diff(im.segment_image_offsets) > 0)
            out.append(np.add.reduceat(per_seg, sh.pack_segment_offsets[:-1]) if sh.num_packs else per_seg[:0])
        return np.concatenate(out) if out else np.zeros(0)
    if balance not in BALANCE:
        raise ConfigError(f"balance '{balance}' is not one of {', '.join(BALANCE)}, patches, or a CostModel")
    parts = []
    for sh in ds.shards:
        if balance == "tokens":
            parts.append(np.diff(sh.pack_token_offsets).astype(np.float64))
        else:
            sq = sh.segment_lengths.astype(np.float64) ** 2
            parts.append(np.add.reduceat(sq, sh.pack_segment_offsets[:-1]) if sh.num_packs else sq[:0])
    return np.concatenate(parts) if parts else np.zeros(0)


def loss_counts(ds: PackedShards) -> np.ndarray:
    """int64 [P]: positions with a label in each pack (the same for both label modes), as the shard writer
    stored them (pack_labels: packer.core.labels.labels_per_pack): no pass over the loss masks, so a run
    streamed from object storage needs only its heads to plan an epoch."""
    parts = [sh.pack_labels for sh in ds.shards if sh.num_packs]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True, costs: np.ndarray | None = None,
                group: int = 0, blocks: int = 0) -> np.ndarray:
    """The epoch's order of the packs: a function of (seed, epoch) (and, when grouped, of the packs' costs)
    only, never of world size or batch size.

    blocks > 1 (shuffle_blocks): the packs, in the shards' order turned round by a random offset (so a
    block's edges move from epoch to epoch), are cut into runs of `blocks` neighbours, and the runs are
    shuffled (a short last run stays last); a run keeps its packs in the shards' order. The shard writer
    shuffles packs as it writes them, so neighbours are a random group, but a fixed one: packs near each
    other in the shards share batches every epoch. What it buys: a rank's batch is one or two runs of
    neighbouring packs, each a single byte range of a shard, so a run streamed from object storage fetches
    a batch in a few requests, not two a pack.

    group > 1 (grouping by cost, as length-grouped samplers do): the shuffled order is cut into windows of
    `group` packs and each window sorted by cost, heaviest first and lightest first by turns, so
    neighbouring packs cost alike across window edges too. Any step of a few packs then holds packs
    of nearly one cost and its ranks' work is even however few packs each rank reads; the price is that a
    window's packs come heavy to light (or back) instead of at random. Ties keep the shuffled order. Windows
    are counted back from the end, so the last is a whole one, and it is turned round by a random offset
    (seeded by seed and epoch): what drop_last drops (the order's last packs, fewer than a step's) is then any
    of its packs alike, not always the heaviest or the lightest, as long as group is at least
    batch_size x world_size.
    """
    if blocks > 1 and group > 1:
        raise ConfigError(f"blocks={blocks} with group={group}: runs of neighbouring packs are not grouped by cost; "
                          "give one of them")
    if blocks > 1 and shuffle and n:
        rng = np.random.default_rng([seed, epoch, 2])
        shift = int(rng.integers(n))
        # whole runs shuffled, a short last run (n not a multiple of blocks) kept last: every whole run then
        # starts at a multiple of blocks, so with blocks a multiple of batch_size no batch straddles two
        starts = np.arange(0, n - n % blocks, blocks, dtype=np.int64)[rng.permutation(n // blocks)]
        starts = np.append(starts, n - n % blocks) if n % blocks else starts
        return (concat_ranges(starts, np.minimum(blocks, n - starts)) + shift) % n
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if group > 1 and n:
        if costs is None or len(costs) != n:
            raise ConfigError("grouping the epoch's order by cost needs one cost per pack")
        window = (n - 1 - np.arange(n)) // group  # 0: the last `group` packs
        direction = np.where(window % 2 == 0, -1.0, 1.0)
        order = order[np.lexsort((np.arange(n), direction * costs[order], -window))]
        last = min(group, n)
        turn = int(np.random.default_rng([seed, epoch, 1]).integers(last))
        order[n - last:] = np.roll(order[n - last:], -turn)
    return order


def epoch_plan(costs: np.ndarray, batch_size: int, world_size: int, seed: int, epoch: int,
               shuffle: bool = True, drop_last: bool = True, start: int = 0, group: int = 0,
               blocks: int = 0) -> np.ndarray:
    """int64 [world_size, steps, batch_size]: the packs every rank reads at every step of an epoch.

    Step k reads the next batch_size x world_size packs of the epoch's order (epoch_order), dealt to the ranks
    by cost; so after k steps the whole job has consumed exactly the order's first k x batch_size x world_size
    packs, whatever the shape. start: packs of the order already consumed (a resume on another shape).
    drop_last=False completes the last step by repeating packs from the start of the (remaining) order
    (as torch's DistributedSampler does), so every rank runs the same number of steps. group: epoch_order's
    windows of packs sorted by cost (0: none). blocks > 1: epoch_order's runs of neighbouring packs, and each
    rank reads the next batch_size packs of the order in turn (rank r of step k: the step's packs
    r x batch_size onward), not packs dealt by cost, so a batch stays one or two runs.
    """
    n = len(costs)
    order = epoch_order(n, seed, epoch, shuffle, costs, group, blocks)[start:]
    n = len(order)
    g = batch_size * world_size
    steps = n // g if drop_last else -(-n // g)
    if steps == 0:
        return np.zeros((world_size, 0, batch_size), np.int64)
    fill = steps * g - n  # drop_last=False: the last step completed from the start of the (remaining) order,
    # the shuffled one when grouped (the grouped order starts with the heaviest packs)
    if fill <= 0:
        packs = order[:steps * g].reshape(steps, g)
    else:
        start_of = epoch_order(len(costs), seed, epoch, shuffle)[start:] if group > 1 else order
        packs = np.concatenate([order, np.resize(start_of, fill)]).reshape(steps, g)
    if blocks > 1:
        return packs.reshape(steps, world_size, batch_size).transpose(1, 0, 2).copy()
    by_cost = np.argsort(-costs[packs], axis=1, kind="stable")
    packs = np.take_along_axis(packs, by_cost, axis=1)
    j = np.arange(g)
    lap, pos = j // world_size, j % world_size
    rank = np.where(lap % 2 == 0, pos, world_size - 1 - pos)  # snake: 0..W-1, W-1..0, ...
    # Odd steps mirror the ranks, so the rank dealt the heaviest pack first does not get it every step.
    ranks = np.where((np.arange(steps) % 2 == 1)[:, None], world_size - 1 - rank[None, :], rank[None, :])
    out = np.empty((world_size, steps, batch_size), np.int64)
    out[ranks, np.arange(steps)[:, None], lap[None, :]] = packs
    if world_size > 1 and batch_size > 1:
        _even_out(costs, out)
    return out


def _even_out(costs: np.ndarray, plan: np.ndarray, rounds: int = 64) -> None:
    """Per step, swap packs between the most and the least loaded rank while a swap lowers the larger of
    the two (the snake deal is the start): each rank keeps batch_size packs, the step keeps its packs, and
    the per-step max/mean falls to what the packs allow far more often than dealing alone. In place;
    deterministic (ties go to the lowest index)."""
    W, steps, B = plan.shape
    for s in range(steps):
        c = costs[plan[:, s, :]]  # [W, B]
        for _ in range(rounds):
            load = c.sum(axis=1)
            hi, lo = int(np.argmax(load)), int(np.argmin(load))
            gap = load[hi] - load[lo]
            if gap <= 0:
                break
            delta = c[hi][:, None] - c[lo][None, :]  # moving pack i of hi for pack j of lo lowers hi by delta
            gain = np.where((delta > 0) & (delta < gap), np.minimum(delta, gap - delta), -1.0)
            k = int(np.argmax(gain))
            if gain.flat[k] <= 0:
                break
            i, j = divmod(k, B)
            plan[hi, s, i], plan[lo, s, j] = plan[lo, s, j], plan[hi, s, i]
            c[hi, i], c[lo, j] = c[lo, j], c[hi, i]


def eval_plan(num_packs: int, batch_size: int, world_size: int) -> np.ndarray:
    """int64 [world_size, steps, batch_size] for evaluation: every pack exactly once, in order (step s,
    rank r reads packs (s * world_size + r) * batch_size onward), -1 where the last step runs out, so
    every rank runs the same number of steps and no pack is dropped or repeated."""
    g = batch_size * world_size
    steps = -(-num_packs // g)
    flat = np.full(steps * g, -1, dtype=np.int64)
    flat[:num_packs] = np.arange(num_packs)
    return flat.reshape(steps, world_size, batch_size).transpose(1, 0, 2).copy()


def imbalance(costs: np.ndarray, plan: np.ndarray) -> dict[str, float]:
    """How unequal the ranks' work is: per step (max / mean - 1, averaged and worst), weighted by the steps'
    work (the sum over steps of the slowest rank's work over the sum of the mean rank's, - 1: the time lost to
    waiting, where a step of little work counts little), and per epoch."""
    if plan.shape[1] == 0:
        return {"step_mean": 0.0, "step_max": 0.0, "step_weighted": 0.0, "epoch": 0.0}
    load = costs[plan].sum(axis=2).astype(np.float64)  # [W, steps]
    mean = load.mean(axis=0)
    per_step = np.divide(load.max(axis=0), mean, out=np.ones_like(mean), where=mean > 0) - 1
    total = load.sum(axis=1)
    return {"step_mean": float(per_step.mean()), "step_max": float(per_step.max()),
            "step_weighted": float(load.max(axis=0).sum() / max(mean.sum(), 1e-300) - 1) if mean.sum() > 0 else 0.0,
            "epoch": float(total.max() / total.mean() - 1) if total.mean() > 0 else 0.0}


class _Batches(torch.utils.data.Dataset):
    """Map-style view of one epoch's batches for this rank: item i builds batch i."""

    def __init__(self, ds: PackedShards, plan: np.ndarray, global_loss: np.ndarray, flatten: bool, pad_id: int,
                 pin_memory: bool = False, share_memory: bool = False, src: BatchSource | None = None,
                 filler: int | None = None, global_pairs: np.ndarray | None = None,
                 step_totals: dict[str, np.ndarray] | None = None):
        self.ds, self.plan, self.global_loss = ds, plan, global_loss
        self.step_totals = step_totals or {}
        """Per step, over every rank: global_num_tokens (real tokens) and global_num_examples (segments)."""
        self.global_pairs = global_pairs
        """Preference runs: units (pairs and unpaired completions) per step over every rank; else None."""
        self.flatten, self.pad_id, self.pin_memory, self.share_memory = flatten, pad_id, pin_memory, share_memory
        self._src = src
        self.filler = filler
        """Eval: the pack that stands in for an empty slot (-1) with no labels, or None (training)."""

    def __getstate__(self) -> dict:
        """Worker processes gather their own BatchSource from their own memory maps."""
        return {**self.__dict__, "_src": None}

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> dict:
        if self.ds.own():  # a forked DataLoader worker opened the remote run itself: rebuild from its maps
            self._src = None
        with self.ds.reading(self.plan[i] if self.filler is None else np.where(self.plan[i] < 0, self.filler,
                                                                                self.plan[i])):
            return self._build(i)

    def _build(self, i: int) -> dict:
        if self._src is None:
            self._src = BatchSource.from_shards(self.ds.shards, self.ds.pack_len, vocab_size=self.ds.vocab_size)
        packs = self.plan[i]
        empty = packs < 0
        if self.filler is not None:
            packs = np.where(empty, self.filler, packs)
        batch = collate(self._src, packs, flatten=self.flatten, pad_id=self.pad_id,
                        label_mode=self.ds.label_mode, pin_memory=self.pin_memory, share_memory=self.share_memory)
        warm(self._src.token_like.dtype)  # a streamed run's kernels load once its first batch is built (loader)
        batch["global_num_loss_tokens"] = int(self.global_loss[i])
        for key, per_step in self.step_totals.items():
            batch[key] = int(per_step[i])
        if self.filler is not None:
            _mark_eval(batch, self.ds, packs, empty, self.flatten)
        if self.global_pairs is not None:
            preference.mark(batch, self.ds, packs, self.flatten, int(self.global_pairs[i]))
        if self.ds.images_meta is not None:
            vision_batch(batch, self.ds, packs)
        return batch


def vision_batch(batch: dict, ds: PackedShards, packs: np.ndarray) -> None:
    """Runs with images: the batch's pixel_values and image_grid_thw (its packs' images in token order) and
    position_ids [4, B, L] (or [4, 1, T] flat): the text row restarting per example, then each example's own
    mRoPE positions (packer.core.vision), as transformers' Qwen-VL models read packed rows. Placeholders that
    do not match their images are refused (a damaged run)."""
    from packer.core.vision import PlaceholderError
    from packer.train.vision import packed_inputs

    grids, pixels = [], []
    for p in packs.tolist():
        g, px = ds.images_of(p)
        grids.append(g)
        pixels.extend(px)
    grid = np.concatenate(grids) if grids else np.zeros((0, 3), np.int64)
    ids = batch["input_ids"]
    try:
        vis = packed_inputs(ids, batch["cu_seqlens"], pixels, grid, ds.image_meta(), int(ds.images_meta["image_token_id"]))
    except PlaceholderError as e:
        raise FormatError(str(ds.path), f"packs {packs.tolist()}: image placeholders do not match their images ({e})",
                          REBUILD_HINT) from None
    if "position_ids" in vis:  # Qwen-VL: [4, rows, L] positions and the grids; LLaVA: plain positions, no grids
        vis["position_ids"] = vis["position_ids"].view(4, *ids.shape)
    batch.update(vis)


def _check_cp(ds: PackedShards, cp_rank: int, cp_size: int, flatten: bool, num_workers: int, eval: bool) -> None:
    planned = ds.cp_size
    if not isinstance(cp_size, int) or cp_size < 1 or not 0 <= cp_rank < cp_size:
        raise ConfigError(f"need cp_size >= 1 and 0 <= cp_rank < cp_size; got cp_rank={cp_rank}, cp_size={cp_size}")
    if planned % cp_size:
        divisors = [d for d in range(1, planned + 1) if planned % d == 0]
        raise ConfigError(f"these shards were planned for cp_size {planned}; open them with a cp_size that divides it "
                          f"({', '.join(map(str, divisors))}), or re-plan with --cp-size {cp_size}")
    if num_workers or eval:
        raise ConfigError("cp_size > 1 builds batches in this process for now: drop num_workers (use prefetch) and eval")


def cp_batch(ds: PackedShards, packs: np.ndarray, cp_rank: int, cp_size: int, pad_id: int, global_loss: int) -> dict:
    """Rank cp_rank's share of a batch of packs, in THD layout: the packs' segments end to end, each padded to
    a multiple of 2 x cp_size (inert: pad_id, no loss, positions continuing the segment's), then split by
    packer.core.context_parallel.cp_indices. cu_seqlens (real lengths) and cu_seqlens_padded are the whole
    batch's, as TransformerEngine's THD attention takes them."""
    ids, mask, lens = [], [], []
    for p in packs.tolist():
        v = ds.arrays(p)
        ids.append(v["tokens"].astype(np.int64))
        mask.append(np.asarray(v["loss_mask"], np.uint8))
        lens.append(np.asarray(v["seg_lens"], np.int64))
    seg = np.concatenate(lens)
    pad = padded_lengths(seg, cp_size)
    cu = np.concatenate([[0], np.cumsum(seg)])
    cu_pad = np.concatenate([[0], np.cumsum(pad)])
    T = int(cu_pad[-1])
    where = np.repeat(cu_pad[:-1] - cu[:-1], seg) + np.arange(int(cu[-1]))  # real token -> padded slot
    tok = np.full(T, pad_id, np.int64)
    msk = np.zeros(T, np.uint8)
    tok[where] = np.concatenate(ids)
    msk[where] = np.concatenate(mask)
    labels = make_labels(tok, msk, cu_pad, ds.label_mode)
    pos = positions(pad, cu_pad)
    idx = cp_indices(cu_pad, cp_rank, cp_size)
    lab = labels[idx]
    return {
        "input_ids": torch.from_numpy(tok[idx])[None], "labels": torch.from_numpy(lab)[None],
        "position_ids": torch.from_numpy(pos[idx])[None],
        "cu_seqlens": torch.from_numpy(cu.astype(np.int32)), "cu_seqlens_padded": torch.from_numpy(cu_pad.astype(np.int32)),
        "max_seqlen": int(pad.max()) if len(pad) else 0, "seq_lens": torch.from_numpy(seg.astype(np.int32)),
        "num_loss_tokens": int((lab != -100).sum()), "global_num_loss_tokens": global_loss,
        "num_tokens": int(np.isin(idx, where).sum()), "pack_index": torch.from_numpy(packs.astype(np.int64)),
        "cp_rank": cp_rank, "cp_size": cp_size,
    }


def _mark_eval(batch: dict, ds: PackedShards, packs: np.ndarray, empty: np.ndarray, flatten: bool) -> None:
    """Eval batches: stand-in packs lose their labels (zero loss, so ranks can run equal steps), and
    `example_index` says, per segment of cu_seqlens, which example it holds (-1: padding or stand-in), as
    PackedShards items do."""
    seg_ex, tok_len = [], []
    for p, e in zip(packs.tolist(), empty.tolist()):
        v = ds.arrays(p)
        n = int(v["seg_lens"].sum())
        seg_ex.append(np.full(len(v["seg_lens"]), -1, np.int64) if e else v["example_index"].astype(np.int64))
        if not flatten and n < ds.pack_len:
            seg_ex.append(np.full(1, -1, np.int64))  # the row's padding segment
        tok_len.append(n if flatten else ds.pack_len)
    batch["example_index"] = torch.from_numpy(np.concatenate(seg_ex)) if seg_ex else torch.zeros(0, dtype=torch.int64)
    if empty.any():
        batch["pack_index"][torch.from_numpy(empty)] = -1
        labels = batch["labels"].view(-1)
        starts = np.concatenate([[0], np.cumsum(tok_len)])
        for r in np.flatnonzero(empty).tolist():
            gone = int((labels[starts[r]:starts[r + 1]] != -100).sum())
            labels[starts[r]:starts[r + 1]] = -100
            batch["num_loss_tokens"] = int(batch["num_loss_tokens"]) - gone


class _From(torch.utils.data.Sampler):
    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def _count(value) -> int:
    """An int option's value, or -1 where it is not an int (a bool included)."""
    try:
        return operator.index(value) if not isinstance(value, bool) else -1
    except TypeError:
        return -1


def _shuffle_blocks(blocks, shuffle: bool, eval: bool, group: int, balance, cost, packs: int) -> int:
    """PackedLoader's shuffle_blocks, checked: runs of neighbouring packs replace the deal by cost, so it
    goes with none of the options that order or deal packs by cost (or do not shuffle), and the run must
    hold at least two whole runs (one is the shards' order, only turned round)."""
    n = _count(blocks)
    if n < 0:
        raise ConfigError(f"shuffle_blocks={blocks!r}: give the packs per run of neighbours the epoch shuffles "
                          "(0 for every pack alone; a few times batch_size is enough)")
    if n <= 1:
        return 0
    clash = ("eval=True (evaluation reads the packs in order)" if eval else
             "shuffle=False (nothing is shuffled)" if not shuffle else
             f"group_by_cost={group}" if group else
             f"balance={balance!r}" if balance is not None else
             "cost=" if cost is not None else None)
    if clash:
        raise ConfigError(f"shuffle_blocks={n} with {clash}: shuffle_blocks gives each rank runs of neighbouring "
                          "packs in turn, not packs dealt by cost; drop one of them")
    if packs // n < 2:
        raise ConfigError(f"shuffle_blocks={n} on a run of {packs} packs: fewer than two whole runs, so nothing "
                          f"would be shuffled; give at most {max(packs // 2, 1)} (or 0)")
    return n


class PackedLoader(torch.utils.data.IterableDataset):
    """Batches of packs from a shards (or run) folder, as dicts of torch tensors.

    Each batch: input_ids, labels, position_ids ([B, pack_len], or [1, total] with flatten=True),
    cu_seqlens int32 [K+1], seq_lens int32 [K], max_seqlen, num_loss_tokens (this rank's labelled
    positions), global_num_loss_tokens (summed over all ranks for this step, known without any
    communication because every rank's plan is deterministic), num_tokens (real tokens) and
    pack_index int64 [B] (which packs of the shards these are).

    cp_rank, cp_size (context parallelism, packs planned with cp_size): this CP rank's load-balanced share
    of each batch, flat (THD), with cu_seqlens and cu_seqlens_padded of the whole batch (see cp_batch).

    eval=True (evaluation): packs in order, never shuffled, dropped or repeated, every pack on exactly
    one rank; the last step's empty slots hold a stand-in pack with no labels (pack_index -1), so every
    rank runs the same number of steps; each batch also has example_index int64 [K] (per segment of
    cu_seqlens, its record number; -1 for padding), for packer.train.loss.per_example_loss.

    Normalize a token-mean loss by global_num_loss_tokens (summed over the micro-batches of an
    optimizer step under gradient accumulation) and sum gradients across ranks.

    Where batches are built: num_workers=0 builds each batch in this process when asked (a compiled
    pass plus ~20 us of fixed cost: packer.train.collate); prefetch=N builds up to N batches ahead in a background
    thread, overlapping the training step, and the training thread's next() is then a queue take that runs
    no Python code (packer.train.prefetch); num_workers>0 uses torch DataLoader worker processes, whose
    hand-over of each batch costs far more than building it (benchmarks/bench_loader.py): prefer prefetch.
    With prefetch, iter() starts the builder thread; an iterator dropped part way stops it, and the next
    iter() goes on from where the dropped one stood.

    A URL (s3://bucket/run, any fsspec URL of a committed run) is streamed by byte range
    (packer.core.rangestore): only the packs this rank reads are fetched, each checked against its checksum,
    `read_ahead` batches ahead of the batch being read (0: each batch fetched when it is built), and at most
    `cache_limit` bytes of packs are kept in the local cache (per process; None: no limit). A cache_limit below
    one batch's largest packs is refused here. The read-ahead window doubles whenever the builder still finds a
    batch not fetched and rounds of several batches take under half the time per pack of rounds of one (a
    store whose round trip, not its rate, outlasts read_ahead steps; before there are rounds of both kinds,
    doubling is the probe), up to 8 x read_ahead batches and never past cache_limit; `dataset.ranges.stats()`
    reports the window and those waits.

    group_by_cost=N orders each window of N packs of the shuffled epoch by the balance cost (epoch_order), so a
    step's packs cost alike and its ranks' work is even even at one pack a rank (a long-tailed mix dealt by cost
    alone is only as even as the few packs a step holds); the order stays a function of (seed, epoch) and the
    packs' costs, so resuming on another shape still reads every pack once (under other costs it is refused).
    Heavy and light steps then come in waves through each window: take N a few times batch_size x world_size
    (epoch_order says why at least once).

    shuffle_blocks=N shuffles runs of N packs that are neighbours in the shards instead of single packs, and each
    rank reads the next batch_size packs of the order in turn (epoch_order): a batch is then one or two byte
    ranges of a shard, which a run streamed from object storage fetches in a few requests instead of two per
    pack (benchmarks/bench_streaming.py). The price is a coarser shuffle: packs near each other in the shards
    share batches every epoch (the shard writer shuffled them once), and there is no deal by cost (balance=,
    cost= and group_by_cost are refused with it). Take N a multiple of batch_size.

    It is an IterableDataset with torchdata's state_dict/load_state_dict, so it can also be the
    dataset of a torch DataLoader or torchdata StatefulDataLoader (batch_size=None; its own
    num_workers=0): worker w of W then builds batches w, w + W, ... of this rank's epoch.
    """

    def __init__(self, path: str | Path, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool | None = None, drop_last: bool | None = None, num_workers: int = 0, pin_memory: bool = False,
                 flatten: bool | None = None, label_mode: str = "unshifted", pad_id: int | None = None,
                 balance: "str | CostModel | None" = None, verify: bool = True, prefetch: int = 0, eval: bool = False,
                 cp_rank: int = 0, cp_size: int = 1, cost: "CostModel | tuple[float, float] | None" = None,
                 cache_limit: int | None = DEFAULT_CACHE_LIMIT, read_ahead: int = 4, group_by_cost: int = 0,
                 shuffle_blocks: int = 0):
        if eval and (shuffle is True or drop_last is True):
            raise ConfigError(f"eval=True never shuffles and never drops; drop shuffle={shuffle} / drop_last={drop_last} "
                              "(the defaults become False)")
        if cp_size != 1 and flatten is False:
            raise ConfigError("cp_size > 1 gives THD batches (one flat row per rank, as TransformerEngine takes them); "
                              "drop flatten=False")
        flatten = cp_size != 1 if flatten is None else flatten  # CP batches are THD: flat by default
        shuffle = (not eval) if shuffle is None else shuffle
        drop_last = (not eval) if drop_last is None else drop_last
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"need batch_size >= 1 and 0 <= rank < world_size; got batch_size={batch_size}, "
                              f"rank={rank}, world_size={world_size}")
        if prefetch < 0:
            raise ConfigError(f"prefetch={prefetch}: give the number of batches to build ahead (0 for none)")
        if prefetch and num_workers:
            raise ConfigError(f"prefetch={prefetch} with num_workers={num_workers}: prefetch is a background thread "
                              "for num_workers=0 (worker processes prefetch on their own); set one of them to 0")
        # the kernels load in the background from when the token dtype is known (collate.warm)
        self.dataset = PackedShards(path, label_mode=label_mode, verify=verify, cache_limit=cache_limit)
        self._reserve = 0  # a remote run: bytes of packs one batch may need at most (kept free by the read-ahead)
        if self.dataset.ranges is not None:
            sizes = np.sort(self.dataset.ranges.pack_bytes)[::-1]
            self._reserve = int(sizes[:batch_size].sum())
            self.dataset.ranges.need(self._reserve, f"one batch of batch_size={batch_size} (its largest packs)")
        self._ahead = None  # the read-ahead thread's stop event (remote runs)
        if isinstance(read_ahead, bool) or not isinstance(read_ahead, int) or read_ahead < 0:
            raise ConfigError(f"read_ahead={read_ahead!r}: give how many batches a remote run's packs are fetched ahead "
                              "(0 for none)")
        self.read_ahead = read_ahead
        group = _count(group_by_cost)
        if group < 0:
            raise ConfigError(f"group_by_cost={group_by_cost!r}: give the window, in packs, whose packs are ordered by "
                              "cost (0 for none; 4 x batch_size x world_size or more evens out every step)")
        group_by_cost = group if group > 1 else 0  # a window of one pack orders nothing
        if group_by_cost and eval:
            raise ConfigError(f"group_by_cost={group_by_cost} with eval=True: evaluation reads the packs in order; "
                              "drop group_by_cost")
        self.group_by_cost = group_by_cost
        self.shuffle_blocks = _shuffle_blocks(shuffle_blocks, shuffle, eval, group_by_cost, balance, cost,
                                              len(self.dataset))
        balance = "tokens" if balance is None else balance
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.num_workers, self.pin_memory, self.flatten = num_workers, pin_memory, flatten
        eos = self.dataset.manifest["tokenizer"].get("eos_id")
        # Padding is inert (its own segment, no labels), so its id only needs to be a valid one.
        self.pad_id = int(pad_id if pad_id is not None else eos if eos is not None else 0)
        self.balance, self.prefetch, self.eval = balance, prefetch, eval
        self.cp_rank, self.cp_size = cp_rank, cp_size
        if cp_size != 1 or cp_rank != 0:
            _check_cp(self.dataset, cp_rank, cp_size, flatten, num_workers, eval)
        if isinstance(balance, CostModel):
            balance, cost = "compute", balance
        if cost is not None and balance != "compute":
            raise ConfigError(f"cost= is the model's cost for balance='compute'; this loader has balance='{balance}'")
        if isinstance(cost, tuple):  # explicit numbers: a x tokens + b x sum of L^2
            a, b = (float(x) for x in cost)
            cost = CostModel(a, ((2 * b, None),))
        self.cost = cost
        self.balance = balance
        self.costs = pack_costs(self.dataset, cost if balance == "compute" and cost is not None else balance)
        self._loss = loss_counts(self.dataset)
        sizes = [(np.diff(sh.pack_token_offsets), np.diff(sh.pack_segment_offsets)) for sh in self.dataset.shards]
        self._per_pack = {  # what a step's loss may be normalized by, summed over every rank (step_totals)
            "global_num_tokens": np.concatenate([t for t, _ in sizes]) if sizes else np.zeros(0, np.int64),
            "global_num_examples": np.concatenate([e for _, e in sizes]) if sizes else np.zeros(0, np.int64)}
        kind = (self.dataset.manifest.get("config") or {}).get("tokenize", {}).get("kind")
        self._pairs = preference.pair_counts(self.dataset) if kind == "preference" else None
        self.epoch = 0
        self._start = 0  # packs of this epoch's order consumed before this loader's plan (an elastic resume)
        self._yielded = 0  # batches of the current epoch handed to the caller (with prefetch: before _progress's)
        self._progress: Progress | None = None  # the prefetch builder of the epoch being read, if any
        self._plan_cache: tuple[int, np.ndarray] | None = None
        self._src: BatchSource | None = None
        if self.dataset.shards:  # the kernels load while the caller sets up (collate.warm); a streamed run's
            # after its first batch, built by numpy meanwhile (its fetch is what the caller waits for)
            (defer if self.dataset.ranges is not None else warm)(self.dataset.shards[0].tokens.dtype)

    def __getstate__(self) -> dict:
        """A copy sent to a DataLoader worker rebuilds its plan and batch source from the memory maps."""
        return {**self.__dict__, "_src": None, "_plan_cache": None, "_progress": None, "_ahead": None}

    def _plan(self) -> np.ndarray:
        key = (self.epoch, self._start)
        if self._plan_cache is None or self._plan_cache[0] != key:
            self._plan_cache = (key, eval_plan(len(self.costs), self.batch_size, self.world_size) if self.eval
                                else epoch_plan(self.costs, self.batch_size, self.world_size, self.seed,
                                                self.epoch, self.shuffle, self.drop_last, self._start,
                                                self.group_by_cost, self.shuffle_blocks))
        return self._plan_cache[1]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order to give; a new epoch starts from its first batch."""
        if epoch != self.epoch:
            self.epoch, self._yielded, self._progress, self._start = epoch, 0, None, 0

    def __len__(self) -> int:
        return self._plan().shape[1]

    def imbalance(self) -> dict[str, float]:
        """Work imbalance across ranks for the current epoch, by the balance cost."""
        return imbalance(self.costs, self._plan())

    def __iter__(self) -> Iterator[dict]:
        """This rank's batches of the current epoch, from where the loader stands (state_dict)."""
        if self.dataset.own():  # in a forked worker of an outer DataLoader: a remote run opened here, afresh
            self._src, self._ahead = None, None
        plan = self._plan()
        mine = plan[self.rank]
        global_loss = np.where(plan >= 0, self._loss[np.maximum(plan, 0)], 0).sum(axis=(0, 2))
        global_pairs = None if self._pairs is None else \
            np.where(plan >= 0, self._pairs[np.maximum(plan, 0)], 0).sum(axis=(0, 2))
        totals = {key: np.where(plan >= 0, per_pack[np.maximum(plan, 0)], 0).sum(axis=(0, 2))
                  for key, per_pack in self._per_pack.items()}
        filler = int(np.argmin(self.costs)) if self.eval and len(self.costs) else None
        start = self._yielded = self._position()
        if self._progress is not None:  # an earlier iterator left part way: it stops, this one goes on
            self._progress.close()
            self._progress = None
        # Inside a DataLoader worker (this loader as the dataset of torch's or torchdata's
        # StatefulDataLoader): worker w of W gives batches w, w + W, ..., which DataLoader reads back
        # in order; each worker's state counts its own batches.
        info = torch.utils.data.get_worker_info()
        w, n_w = (info.id, info.num_workers) if info else (0, 1)
        if info is not None and self.num_workers:
            raise ConfigError("this PackedLoader runs inside a DataLoader worker, which cannot start workers of its "
                              "own; give it num_workers=0 and let the outer DataLoader have the workers")
        if self.num_workers:
            # Workers build each batch in shared memory as one storage: one hand-over per batch, not seven.
            batches = _Batches(self.dataset, mine, global_loss, self.flatten, self.pad_id, share_memory=True,
                               filler=filler, global_pairs=global_pairs, step_totals=totals)
            return self._counted(torch.utils.data.DataLoader(
                batches, batch_size=None, sampler=_From(start, len(mine)), num_workers=self.num_workers,
                pin_memory=self.pin_memory, persistent_workers=False,
                # DataLoader draws worker seeds from this generator instead of torch's global RNG.
                generator=torch.Generator().manual_seed(self.seed)))
        # No DataLoader machinery in the way: ~15 us a batch saved.
        if self._src is None:  # gathered once per loader (per process)
            self._src = BatchSource.from_shards(self.dataset.shards, self.dataset.pack_len,
                                                keep=8 + self.prefetch, vocab_size=self.dataset.vocab_size)
        batches = _Batches(self.dataset, mine, global_loss, self.flatten, self.pad_id, self.pin_memory,
                           share_memory=info is not None, src=self._src, filler=filler, global_pairs=global_pairs,
                           step_totals=totals)
        todo = range(w + n_w * start, len(mine), n_w)
        if self.dataset.ranges is not None:  # a remote run: fetch the coming batches' packs ahead of the builder
            if self._ahead is not None:
                self._ahead.set()
            self._ahead = self.dataset.ranges.read_ahead((mine[i] for i in todo), self._reserve,
                                                         max(1, self.read_ahead)) if self.read_ahead else None
        make = batches.__getitem__
        if self.cp_size > 1:
            def make(i: int, _b=batches) -> dict:
                with self.dataset.reading(_b.plan[i]):
                    return cp_batch(self.dataset, _b.plan[i], self.cp_rank, self.cp_size, self.pad_id,
                                    int(_b.global_loss[i]))
        if not self.prefetch:
            return self._counted(map(make, todo))
        # The training thread's next() is then C calls only (packer.train.prefetch); the position is counted
        # by the builder, and the epoch's end resets it.
        def on_end() -> None:
            if self._progress is progress:
                self._epoch_done()

        items, progress = in_background(make, todo, self.prefetch, on_end=on_end)
        self._progress = progress
        return items

    def _counted(self, source: Iterator[dict]) -> Iterator[dict]:
        for batch in source:
            self._yielded += 1
            yield batch
        self._epoch_done()

    def _epoch_done(self) -> None:
        """The epoch is complete: iterating again repeats it unless set_epoch moves on."""
        self._yielded, self._progress, self._start = 0, None, 0

    def _position(self) -> int:
        """Batches of the current epoch handed to the caller."""
        if self._progress is not None:
            return self._yielded + self._progress.taken()
        return self._yielded

    def state_dict(self) -> dict:
        """Where the loader stands: restoring it yields exactly the batches still to come. It carries the run's
        identity (the shards manifest's seal and the plan's digest), so it resumes only the run it came from."""
        position = self._position()
        consumed = min(len(self.dataset), self._start + position * self.batch_size * self.world_size)
        return {"epoch": self.epoch, "batches_yielded": position, "packs_consumed": consumed, "start": self._start,
                "seed": self.seed, "cp_size": self.cp_size,
                "batch_size": self.batch_size, "world_size": self.world_size, "rank": self.rank,
                "num_packs": len(self.dataset), "shuffle": self.shuffle, "drop_last": self.drop_last,
                "balance": self._balance_name(), "group_by_cost": self.group_by_cost, "costs": self._costs_digest(),
                "shuffle_blocks": self.shuffle_blocks,
                "eval": self.eval, **self._identity()}

    def _costs_digest(self) -> str | None:
        """Grouped orders follow the packs' costs: their digest, so a resume under a cost that differs in any
        bit (a model config changed in its 7th digit) is refused rather than reading another order."""
        if not self.group_by_cost:
            return None
        return hashlib.sha256(np.ascontiguousarray(self.costs, np.float64).tobytes()).hexdigest()[:16]

    def _balance_name(self) -> str:
        return self.cost.describe() if self.balance == "compute" and self.cost is not None else self.balance

    def _identity(self) -> dict:
        m = self.dataset.manifest
        lineage = m.get("lineage") if isinstance(m.get("lineage"), dict) else {}
        return {"run": m.get("manifest_sha256"), "plan": lineage.get("plan")}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (from state_dict). Every field is checked before anything changes: a state of
        another run or plan, of other settings, or with a position outside the epoch is refused, naming it."""
        if not isinstance(state, dict):
            raise ConfigError(f"a loader state is a dict from PackedLoader.state_dict(), not {type(state).__name__}")
        missing = [k for k in ("epoch", "batches_yielded", "run", "plan") if k not in state]
        if missing:
            raise ConfigError(f"the loader state lacks {', '.join(missing)} (saved by another version of packer, or "
                              "not a PackedLoader state); resume from a checkpoint of this version")
        for key, mine in self._identity().items():
            if state[key] != mine:
                what = "shards (the manifest's seal)" if key == "run" else "plan (its digest)"
                raise ConfigError(f"the loader state is of another run: its {what} {str(state[key])[:16]} is not this "
                                  f"run's {str(mine)[:16]}; resume on the run the checkpoint was trained on")
        # states saved before grouping or blocks existed were neither
        state = {"group_by_cost": 0, "costs": None, "shuffle_blocks": 0, **state}
        for key in ("seed", "num_packs", "shuffle", "drop_last", "balance", "group_by_cost", "costs", "shuffle_blocks",
                    "eval"):
            mine = {"num_packs": len(self.dataset), "balance": self._balance_name(),
                    "costs": self._costs_digest()}.get(key, getattr(self, key, None))
            if key in state and state[key] != mine:
                if key == "costs":
                    raise ConfigError(f"the packs' costs (digest {mine}) are not the ones this state's order, grouped by "
                                      f"cost, was made with (digest {state[key]}); resume with the same balance and cost "
                                      "model")
                raise ConfigError(f"state was saved with {key}={state[key]}, this loader has {key}={mine}; "
                                  "resume with the same settings and shards (world_size and batch_size may change)")
        epoch = whole("the loader state's epoch", state["epoch"], 0, 2**31 - 1)
        reshaped = any(k in state and state[k] != getattr(self, k) for k in ("batch_size", "world_size"))
        if reshaped:  # elastic: the job consumed the order's first packs_consumed packs; go on with the rest
            if self.eval:
                raise ConfigError("an eval loader resumes on the world_size and batch_size it was saved with")
            if "packs_consumed" not in state:
                raise ConfigError("the loader state lacks packs_consumed (saved by an older packer), so it resumes only "
                                  f"with world_size={state.get('world_size')} and batch_size={state.get('batch_size')}")
            consumed = whole("the loader state's packs_consumed", state["packs_consumed"], 0, len(self.dataset))
            self.epoch, self._start, self._yielded, self._progress = epoch, consumed, 0, None
            return
        start = whole("the loader state's start", state.get("start", 0), 0, len(self.dataset))
        saved = self.epoch, self._start
        self.epoch, self._start = epoch, start
        try:
            steps = len(self)  # batches in that epoch for this rank
        finally:
            self.epoch, self._start = saved
        yielded = whole("the loader state's batches_yielded", state["batches_yielded"], 0, steps,
                        f"epoch {epoch} has {steps} batches on this rank")
        self.epoch, self._start, self._yielded, self._progress = epoch, start, yielded, None
