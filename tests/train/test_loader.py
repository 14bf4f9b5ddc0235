"""PackedLoader: resume, ranks, determinism, padded vs flattened, and damaged shards."""

from __future__ import annotations

import re

import gc
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from packer.core import config as C
from packer.core.errors import ConfigError, FormatError
from packer.train.loader import PackedLoader, epoch_plan, imbalance
from packer.train.reader import PackedShards
from packer.pipeline import pack

from conftest import sft_records, write_jsonl


@pytest.fixture(scope="module")
def run(tmp_path_factory, byte_tok):
    tmp = tmp_path_factory.mktemp("loader")
    data = write_jsonl(tmp / "d.jsonl", sft_records(400, seed=5))
    pack([str(data)], tmp / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=256),
         write_config=C.WriteConfig(shard_bytes=30_000))
    return tmp / "r"


def as_lists(batches):
    return [{k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in b.items()} for b in batches]


@pytest.mark.parametrize(("workers", "ahead"), [(0, 0), (2, 0), (0, 3)])
def test_resume_mid_epoch_gives_exactly_the_rest(run, workers, ahead):
    full = as_lists(PackedLoader(run, 4, seed=3))
    assert len(full) >= 5
    assert as_lists(PackedLoader(run, 4, seed=3, num_workers=workers, prefetch=ahead)) == full
    a = PackedLoader(run, 4, seed=3, num_workers=workers, prefetch=ahead)
    it = iter(a)
    head = [next(it) for _ in range(3)]
    state = a.state_dict()  # the prefetch thread has built batches past these: they are not counted
    del it
    b = PackedLoader(run, 4, seed=3, num_workers=workers, prefetch=ahead)
    b.load_state_dict(state)
    rest = as_lists(b)
    assert as_lists(head) + rest == full


@pytest.mark.parametrize("ahead", [0, 2])
def test_a_resumed_loader_saves_its_place_again(run, ahead):
    full = as_lists(PackedLoader(run, 4, seed=3))
    a = PackedLoader(run, 4, seed=3, prefetch=ahead)
    a.load_state_dict({**a.state_dict(), "batches_yielded": 2})
    it = iter(a)
    middle = [next(it), next(it)]
    state = a.state_dict()
    assert state["batches_yielded"] == 4, "counted from where it resumed, not from the epoch's start"
    del it
    b = PackedLoader(run, 4, seed=3, prefetch=ahead)
    b.load_state_dict(state)
    assert full[:2] + as_lists(middle) + as_lists(b) == full


@pytest.mark.parametrize("workers", [0, 2])
def test_inside_torchdata_stateful_dataloader(run, workers):
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    full = as_lists(PackedLoader(run, 4, seed=3))

    def outer():
        return stateful.StatefulDataLoader(PackedLoader(run, 4, seed=3), batch_size=None, num_workers=workers)

    assert as_lists(outer()) == full, "worker w gives batches w, w + W, ...: read back in order"
    a = outer()
    it = iter(a)
    head = [next(it) for _ in range(3)]
    state = a.state_dict()
    del it
    b = outer()
    b.load_state_dict(state)
    assert as_lists(head) + as_lists(b) == full


def test_prefetch_keeps_held_batches_intact_and_stops_its_thread(run):
    ld = PackedLoader(run, 3, seed=7, prefetch=2)
    held = list(ld)  # every batch of the epoch alive at once while the thread ran ahead
    assert as_lists(held) == as_lists(PackedLoader(run, 3, seed=7))
    it = iter(ld)
    next(it)
    del it  # leaving the epoch early: the builder sees nobody reads its batches and stops
    gc.collect()
    deadline = time.monotonic() + 5
    while [t for t in threading.enumerate() if t.name == "packer-prefetch"] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not [t for t in threading.enumerate() if t.name == "packer-prefetch"]
    assert len(as_lists(ld)) == len(held) - 1, "a new iterator goes on from where the last one left"
    with pytest.raises(ConfigError, match="prefetch is a background thread"):
        PackedLoader(run, 3, prefetch=2, num_workers=2)
    with pytest.raises(ConfigError, match="number of batches to build ahead"):
        PackedLoader(run, 3, prefetch=-1)


def test_resume_across_epochs_and_mismatched_state(run):
    a = PackedLoader(run, 4, seed=1)
    a.set_epoch(2)
    it = iter(a)
    next(it)
    state = a.state_dict()
    b = PackedLoader(run, 4, seed=1)
    b.load_state_dict(state)
    ref = PackedLoader(run, 4, seed=1)
    ref.set_epoch(2)
    assert as_lists(b) == as_lists(ref)[1:]
    with pytest.raises(ConfigError, match="state was saved with seed=1, this loader has seed=2"):
        PackedLoader(run, 4, seed=2).load_state_dict(state)


def test_ranks_disjoint_covering_and_equal_steps(run):
    for drop_last in (True, False):
        loaders = [PackedLoader(run, 3, rank=r, world_size=4, seed=0, drop_last=drop_last) for r in range(4)]
        plan = epoch_plan(loaders[0].costs, 3, 4, 0, 0, True, drop_last)
        steps = {len(ld) for ld in loaders}
        assert len(steps) == 1, "every rank runs the same number of steps"
        n = len(loaders[0].dataset)
        if drop_last:
            flat = plan.reshape(-1)
            assert len(set(flat.tolist())) == len(flat) == (n // 12) * 12, "disjoint"
        else:
            assert set(plan.reshape(-1).tolist()) == set(range(n)), "covering"
    # the batches each rank yields are the packs of its plan, token for token
    ld = PackedLoader(run, 3, rank=2, world_size=4, seed=0, shuffle=False)
    plan = epoch_plan(ld.costs, 3, 4, 0, 0, False, True)
    first = next(iter(ld))
    want = [ld.dataset[int(i)]["input_ids"].tolist() for i in plan[2, 0]]
    got = [row[: len(w)].tolist() for row, w in zip(first["input_ids"], want)]
    assert got == want


def test_global_loss_tokens_sum_over_ranks(run):
    loaders = [PackedLoader(run, 2, rank=r, world_size=3, seed=4) for r in range(3)]
    firsts = [next(iter(ld)) for ld in loaders]
    total = sum(b["num_loss_tokens"] for b in firsts)
    assert all(b["global_num_loss_tokens"] == total for b in firsts)


def test_order_depends_only_on_seed_and_epoch(run):
    def first_ids(seed, epoch):
        ld = PackedLoader(run, 2, seed=seed)
        ld.set_epoch(epoch)
        return [b["input_ids"].tolist() for b in ld]

    assert first_ids(0, 0) == first_ids(0, 0)
    assert first_ids(0, 0) != first_ids(0, 1)
    assert first_ids(0, 0) != first_ids(1, 0)
    state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    first_ids(0, 3)
    assert torch.equal(state, torch.random.get_rng_state()), "no global RNG is touched"
    assert np.array_equal(np_state, np.random.get_state()[1])


def test_set_epoch_on_a_used_loader_gives_that_epochs_order(run):
    """The epoch plan is cached: set_epoch must replace it, on a loader that has already run an epoch."""
    def ids(ld):
        return [b["input_ids"].tolist() for b in ld]

    ld = PackedLoader(run, 2, seed=0)
    epoch0 = ids(ld)
    ld.set_epoch(1)
    fresh = PackedLoader(run, 2, seed=0)
    fresh.set_epoch(1)
    assert ids(ld) == ids(fresh) != epoch0
    ld.set_epoch(0)
    assert ids(ld) == epoch0


@pytest.mark.parametrize("mode", ["unshifted", "shifted"])
def test_padded_and_flat_agree_and_padding_is_inert(run, mode):
    padded = PackedLoader(run, 3, seed=2, label_mode=mode)
    flat = PackedLoader(run, 3, seed=2, label_mode=mode, flatten=True)
    ds, L = padded.dataset, padded.dataset.pack_len
    for p, f in zip(padded, flat):
        assert p["pack_index"].tolist() == f["pack_index"].tolist()
        B = p["input_ids"].shape[0]
        assert p["input_ids"].shape == (B, L) and f["input_ids"].shape == (1, f["num_tokens"])
        cu = p["cu_seqlens"].tolist()
        assert cu[-1] == B * L and set(range(0, B * L + 1, L)) <= set(cu), "rows end on segment boundaries"
        assert f["cu_seqlens"].tolist()[-1] == f["num_tokens"]
        fi = 0
        for r, i in enumerate(p["pack_index"].tolist()):
            item = ds[i]
            n = len(item["input_ids"])
            for key in ("input_ids", "labels", "position_ids"):
                assert p[key][r, :n].tolist() == item[key].tolist() == f[key][0, fi:fi + n].tolist(), key
            assert (p["labels"][r, n:] == -100).all(), "padding never has a label"
            assert (p["input_ids"][r, n:] == padded.pad_id).all()
            fi += n
        assert p["num_loss_tokens"] == f["num_loss_tokens"] == int((p["labels"] != -100).sum())


def test_imbalance_is_small_and_reported(run):
    ld = PackedLoader(run, 2, world_size=4)
    imb = ld.imbalance()
    assert set(imb) == {"step_mean", "step_max", "step_weighted", "epoch"} and 0 <= imb["epoch"] < 0.05
    costs = np.array([10.0, 1, 1, 1, 1, 1, 1, 10])
    plan = epoch_plan(costs, 2, 2, 0, 0, shuffle=False)
    # step 0 holds 10,1,1,1 and step 1 holds 1,1,1,10: the heavy pack goes to a different rank each time
    assert [costs[plan[r]].sum(axis=1).tolist() for r in range(2)] == [[11.0, 2.0], [2.0, 11.0]]
    assert imbalance(costs, plan)["epoch"] == 0 and imbalance(costs, plan)["step_max"] > 0


def test_damaged_shard_errors_name_the_file(tmp_path, byte_tok):
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(40))
    pack([str(data)], tmp_path / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=256))
    shard = next((tmp_path / "r" / "shards").glob("shard-*.bin"))
    raw = bytearray(shard.read_bytes())
    raw[200] ^= 1
    shard.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match=r"shard-00000\.bin: checksum differs"):
        PackedLoader(tmp_path / "r", 2)
    shard.write_bytes(bytes(raw[:-10]))
    with pytest.raises(FormatError, match=r"shard-00000\.bin: truncated"):
        PackedLoader(tmp_path / "r", 2, verify=False)


def test_a_state_of_another_run_with_as_many_packs_is_refused(run, tmp_path, byte_tok):
    """Before: load_state_dict compared the pack count only, so a checkpoint of one run resumed silently on
    another run with the same number of packs. A state carries its run's identity now."""
    other = tmp_path / "other"
    # the same records with one changed answer: as many packs, other shards
    records = sft_records(400, seed=5)
    records[7]["response"] = records[7]["response"][::-1]
    pack([str(write_jsonl(tmp_path / "o.jsonl", records))], other, tokenizer=byte_tok,
         plan_config=C.PlanConfig(pack_len=256), write_config=C.WriteConfig(shard_bytes=30_000))
    a, b = PackedLoader(run, 4, seed=3), PackedLoader(other, 4, seed=3)
    assert len(a.dataset) == len(b.dataset)
    state = a.state_dict()
    assert state["run"] == a.dataset.manifest["manifest_sha256"]
    with pytest.raises(ConfigError, match="the loader state is of another run: its shards"):
        b.load_state_dict(state)


@pytest.mark.parametrize("field,value,says", [
    ("batches_yielded", -1, "batches_yielded is -1"),
    ("batches_yielded", 10**6, "it must be from 0 to"),
    ("batches_yielded", "3", "give a whole number"),
    ("epoch", -1, "epoch is -1"),
    ("epoch", 1.5, "give a whole number"),
    ("packs_consumed", -1, "packs_consumed is -1"),
    ("packs_consumed", 10**9, "packs_consumed is 1,000,000,000"),
])
def test_every_field_of_a_state_is_checked(run, field, value, says):
    """Before: a negative batches_yielded yielded more batches than the epoch has."""
    loader = PackedLoader(run, 4, seed=3)
    state = dict(loader.state_dict(), **{field: value})
    if field == "packs_consumed":  # read on a resume with another shape
        state["world_size"] = 2
    with pytest.raises(ConfigError, match=says):
        loader.load_state_dict(state)
    with pytest.raises(ConfigError, match="lacks run"):
        loader.load_state_dict({k: v for k, v in loader.state_dict().items() if k != "run"})
    assert as_lists(loader) == as_lists(PackedLoader(run, 4, seed=3)), "a refused state changes nothing"


def _packs(batches) -> list[int]:
    return [p for b in batches for p in b["pack_index"].tolist()]


@settings(max_examples=25, deadline=None)
@given(first=st.tuples(st.integers(1, 5), st.integers(1, 4)), then=st.tuples(st.integers(1, 5), st.integers(1, 4)),
       steps=st.integers(0, 6), epoch=st.integers(0, 3), group=st.sampled_from([0, 5]),
       blocks=st.sampled_from([0, 0, 4, 7]))
def test_elastic_resume_consumes_every_pack_once_in_the_order(run, first, then, steps, epoch, group, blocks):
    """Stop after `steps` steps on (batch_size, world_size) = first, resume on `then`: across the resume every pack
    of the epoch is read at most once, nothing is skipped that the new shape could read, and the rest comes in the
    order of the epoch (the order a run on the new shape reads from that point)."""
    from packer.train.loader import epoch_order

    (b1, w1), (b2, w2) = first, then
    group = 0 if blocks else group  # runs of neighbours are not grouped by cost (refused together)
    n = len(PackedShards(run))
    loaders = [PackedLoader(run, b1, rank=r, world_size=w1, seed=7, group_by_cost=group, shuffle_blocks=blocks)
               for r in range(w1)]
    for ld in loaders:
        ld.set_epoch(epoch)
    iters = [iter(ld) for ld in loaders]
    steps = min(steps, len(loaders[0]))
    before = []
    for _ in range(steps):
        for it in iters:
            before += next(it)["pack_index"].tolist()
    states = [ld.state_dict() for ld in loaders]
    assert len({s["packs_consumed"] for s in states}) == 1  # every rank agrees where the job stands
    after = []
    for r in range(w2):
        ld = PackedLoader(run, b2, rank=r, world_size=w2, seed=7, group_by_cost=group, shuffle_blocks=blocks)
        ld.load_state_dict(states[r % w1])  # any rank's state resumes any rank
        after.append(_packs(ld))
    read = before + [p for a in after for p in a]
    assert len(read) == len(set(read)), "a pack read twice"
    order = epoch_order(n, 7, epoch, costs=loaders[0].costs, group=group, blocks=blocks).tolist()
    consumed = states[0]["packs_consumed"]
    assert sorted(before) == sorted(order[:consumed])
    g2 = b2 * w2
    rest = order[consumed:consumed + (n - consumed) // g2 * g2]  # drop_last: whole steps of the new shape
    assert sorted(p for a in after for p in a) == sorted(rest)
    steps2 = len(after[0]) // b2
    for k in range(steps2):  # step k of the resumed job reads the next g2 packs of the order
        got = sorted(p for a in after for p in a[k * b2:(k + 1) * b2])
        assert got == sorted(rest[k * g2:(k + 1) * g2])


@settings(max_examples=50, deadline=None)
@given(costs=st.lists(st.integers(0, 9), min_size=0, max_size=40), group=st.integers(0, 12),
       seed=st.integers(0, 3), shuffle=st.booleans())
def test_an_order_grouped_by_cost_is_the_shuffled_order_sorted_in_windows(costs, group, seed, shuffle):
    """Grouping keeps every pack once; each window of `group` packs holds the same packs as the ungrouped order's
    window, sorted by cost (heaviest and lightest first by turns, windows counted back from the end), ties in the
    ungrouped order; the last window turned round by an offset (what drop_last drops is then random)."""
    from packer.train.loader import epoch_order

    c = np.array(costs, dtype=np.int64)
    plain = epoch_order(len(c), seed, 0, shuffle).tolist()
    got = epoch_order(len(c), seed, 0, shuffle, c, group).tolist()
    assert sorted(got) == list(range(len(c)))
    n = len(c)
    if group <= 1 or not n:
        assert got == plain
        return
    starts = list(range(n - group, 0, -group))[::-1]  # windows counted back from the end: the last is whole
    edges = [0, *[a for a in starts if a > 0], n] if n > group else [0, n]
    for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        window = plain[a:b]
        heavy_first = (len(edges) - 2 - k) % 2 == 0  # the last window heaviest first, then by turns backwards
        window = sorted(window, key=lambda p: (-c[p] if heavy_first else c[p], window.index(p)))
        if b == n:  # the last window turned round by some offset
            assert any(got[a:b] == window[t:] + window[:t] for t in range(len(window))), (got[a:b], window)
        else:
            assert got[a:b] == window


def test_grouping_by_cost_drops_and_repeats_random_packs():
    """What drop_last drops (fewer than a step's packs at the end of the order) is a random few with grouping too,
    not the heaviest or the lightest of the last window epoch after epoch; drop_last=False repeats random packs."""
    costs = np.random.default_rng(0).lognormal(0, 1, 1000)
    heavy, light = set(np.argsort(-costs)[:100].tolist()), set(np.argsort(costs)[:100].tolist())
    dropped, repeated = [], []
    for epoch in range(200):
        used = epoch_plan(costs, 16, 4, 0, epoch, group=256).reshape(-1)
        dropped += sorted(set(range(1000)) - set(used.tolist()))
        full = epoch_plan(costs, 16, 4, 0, epoch, drop_last=False, group=256).reshape(-1)
        repeated += full[1000:].tolist() if len(full) > 1000 else []
    assert len(dropped) == 200 * (1000 % 64)
    for tenth in (heavy, light):  # each a tenth of the packs: about a tenth of the drops and repeats
        share = sum(p in tenth for p in dropped) / len(dropped)
        again = sum(p in tenth for p in repeated) / len(repeated)
        assert share < 0.2 and again < 0.2, (share, again)


def test_grouping_by_cost_evens_out_steps_of_one_pack_a_rank(tmp_path, byte_tok):
    """A long-tailed mix at one pack a rank: dealing alone is only as even as each step's four packs; ordered by
    cost in windows of 32 packs, a step's packs cost alike."""
    recs = [{"query": "p " * 3, "response": "w " * (4 + 60 * (i % 13 == 0) + 25 * (i % 5 == 0) + i % 7)}
            for i in range(600)]
    write_jsonl(tmp_path / "d.jsonl", recs)
    pack([str(tmp_path / "d.jsonl")], tmp_path / "run", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=256))
    plain = PackedLoader(tmp_path / "run", 1, world_size=4, seed=0, balance="attention")
    grouped = PackedLoader(tmp_path / "run", 1, world_size=4, seed=0, balance="attention", group_by_cost=32)
    a, b = plain.imbalance(), grouped.imbalance()
    assert sorted(grouped._plan().reshape(-1).tolist()) == sorted(plain._plan().reshape(-1).tolist())
    assert b["step_mean"] < a["step_mean"] / 3, (a, b)
    state = grouped.state_dict()
    with pytest.raises(ConfigError, match="state was saved with group_by_cost=32, this loader has group_by_cost=0"):
        plain.load_state_dict(state)
    with pytest.raises(ConfigError, match="group_by_cost=-1"):
        PackedLoader(tmp_path / "run", 1, group_by_cost=-1)
    with pytest.raises(ConfigError, match="eval=True"):
        PackedLoader(tmp_path / "run", 1, group_by_cost=8, eval=True)
    assert PackedLoader(tmp_path / "run", 1, group_by_cost=np.int64(1)).group_by_cost == 0  # orders nothing
    # the order follows the costs: a cost model off in its 7th digit is refused, not read in another order
    from packer.core.cost import CostModel

    a = PackedLoader(tmp_path / "run", 1, world_size=4, balance=CostModel(1.0, ((2.0, None),)), group_by_cost=32)
    b = PackedLoader(tmp_path / "run", 1, world_size=4, balance=CostModel(1.0000001, ((2.0, None),)),
                     group_by_cost=32)
    assert a._balance_name() == b._balance_name()
    with pytest.raises(ConfigError, match="costs .* are not the ones this state's order"):
        b.load_state_dict(a.state_dict())


def test_elastic_state_of_another_epoch_order_is_refused(run):
    a = PackedLoader(run, 2, world_size=2, seed=1)
    next(iter(a))
    state = a.state_dict()
    with pytest.raises(ConfigError, match="state was saved with seed=1, this loader has seed=5"):
        PackedLoader(run, 3, world_size=3, seed=5).load_state_dict(state)
    older = {k: v for k, v in state.items() if k != "packs_consumed"}
    with pytest.raises(ConfigError, match="lacks packs_consumed"):
        PackedLoader(run, 3, world_size=3, seed=1).load_state_dict(older)


def test_torchdata_stateful_dataloader_resumes_on_another_shape(run):
    """A StatefulDataLoader checkpoint (num_workers=0) taken on 2 ranks x 4 packs resumes on 3 ranks x 2 packs."""
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    from packer.train.loader import epoch_order

    old = [stateful.StatefulDataLoader(PackedLoader(run, 4, rank=r, world_size=2, seed=3), batch_size=None)
           for r in range(2)]
    iters = [iter(d) for d in old]
    before = [p for _ in range(2) for it in iters for p in next(it)["pack_index"].tolist()]
    state = old[0].state_dict()
    after = []
    for r in range(3):
        d = stateful.StatefulDataLoader(PackedLoader(run, 2, rank=r, world_size=3, seed=3), batch_size=None)
        d.load_state_dict(state)
        after += _packs(d)
    n = len(PackedShards(run))
    order = epoch_order(n, 3, 0).tolist()
    assert sorted(before) == sorted(order[:16])
    assert sorted(after) == sorted(order[16:16 + (n - 16) // 6 * 6]) and not set(before) & set(after)


def test_resume_two_then_three_then_one_rank_reads_every_pack_exactly_once(run):
    """The issue's chain: 2 ranks x 3 packs for 2 steps, then 3 ranks x 2 packs for 2 steps, then 1 rank x 1 pack to
    the end of the epoch: every pack of the epoch once, none twice, none missing."""
    from packer.train.loader import epoch_order

    n = len(PackedShards(run))
    read, state = [], None
    for (bs, ws, steps) in ((3, 2, 2), (2, 3, 2), (1, 1, None)):
        loaders = [PackedLoader(run, bs, rank=r, world_size=ws, seed=11) for r in range(ws)]
        for ld in loaders:
            ld.set_epoch(1)
            if state is not None:
                ld.load_state_dict(state)
        iters = [iter(ld) for ld in loaders]
        for _ in range(steps if steps is not None else len(loaders[0])):
            for it in iters:
                read += next(it)["pack_index"].tolist()
        state = loaders[-1].state_dict()
    assert sorted(read) == list(range(n)) and len(read) == n
    order = epoch_order(n, 11, 1).tolist()
    assert sorted(read[:12]) == sorted(order[:12]) and sorted(read[12:24]) == sorted(order[12:24])  # legs in order
    assert state["packs_consumed"] == n


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), runs=st.integers(1, 12), batch=st.integers(1, 6), world=st.integers(1, 4),
       seed=st.integers(0, 3), epoch=st.integers(0, 3))
def test_shuffle_blocks_reads_runs_of_neighbours(n, runs, batch, world, seed, epoch):
    """shuffle_blocks=N: the order is every pack once, in runs of N neighbours (turned round the end of the
    shards) that move from epoch to epoch, and with N a multiple of batch_size every rank's batch is one run."""
    from packer.train.loader import epoch_order

    blocks = runs * batch
    order = epoch_order(n, seed, epoch, blocks=blocks)
    assert sorted(order.tolist()) == list(range(n))
    if n == 0:
        return
    steps = np.diff(order) % n  # 1 inside a run
    assert (steps[np.arange(1, n) % blocks != 0] == 1).all(), "a run is not N neighbours in order"
    plan = epoch_plan(np.ones(n), batch, world, seed, epoch, blocks=blocks)
    for r in range(world):
        for b in plan[r]:
            assert ((np.diff(b) % n) == 1).all(), "a batch is not one run of neighbours"
    if blocks > 1 and n >= 2 * blocks:
        firsts = {tuple(epoch_order(n, seed, e, blocks=blocks)[:blocks]) for e in range(6)}
        assert len(firsts) > 1, "the same runs every epoch"


def test_shuffle_blocks_is_refused_with_what_deals_by_cost(run):
    for extra, what in (({"balance": "tokens"}, "balance='tokens'"), ({"group_by_cost": 8}, "group_by_cost=8"),
                        ({"shuffle": False}, "shuffle=False"), ({"eval": True}, "eval=True"),
                        ({"cost": (1.0, 0.1)}, "cost=")):
        with pytest.raises(ConfigError, match=f"shuffle_blocks=8 with {re.escape(what)}"):
            PackedLoader(run, 2, shuffle_blocks=8, **extra)
    with pytest.raises(ConfigError, match="shuffle_blocks=-1"):
        PackedLoader(run, 2, shuffle_blocks=-1)
    a = PackedLoader(run, 2, world_size=2, seed=1, shuffle_blocks=4)
    next(iter(a))
    with pytest.raises(ConfigError, match="state was saved with shuffle_blocks=4, this loader has shuffle_blocks=0"):
        PackedLoader(run, 2, world_size=2, seed=1).load_state_dict(a.state_dict())
    assert PackedLoader(run, 2, shuffle_blocks=1).shuffle_blocks == 0  # a run of one is plain shuffling
    n = len(PackedShards(run))
    with pytest.raises(ConfigError, match=f"shuffle_blocks={n // 2 + 1} on a run of {n} packs: fewer than two whole"):
        PackedLoader(run, 2, shuffle_blocks=n // 2 + 1)
    assert PackedLoader(run, 2, shuffle_blocks=n // 2).shuffle_blocks == n // 2
    from packer.train.loader import epoch_order
    with pytest.raises(ConfigError, match="blocks=4 with group=5"):
        epoch_order(20, 0, 0, costs=np.ones(20), group=5, blocks=4)
