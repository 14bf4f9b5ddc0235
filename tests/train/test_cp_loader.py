"""Packs planned for context parallelism (--cp-size N) and loaded per CP rank: each rank's share is whole,
every token is on exactly one CP rank, labels and positions are those of the unsplit pack, and a cp_size
the shards were not planned for is refused with what to pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from packer.core import config as C
from packer.train.reader import PackedShards
from packer.core.errors import ConfigError
from packer.train.loader import PackedLoader
from packer.pipeline import pack

from conftest import sft_records, write_jsonl


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cp")
    data = write_jsonl(tmp / "d.jsonl", sft_records(150, seed=9))
    report = pack([str(data)], tmp / "run", plan_config=C.PlanConfig(pack_len=512, cp_size=4))
    assert report["cp_size"] == 4 and report["cp_padding_tokens"] > 0
    return tmp / "run"


def test_planned_packs_fit_with_their_cp_padding(run):
    ds = PackedShards(run)
    for i in range(len(ds)):
        seg = ds.arrays(i)["seg_lens"].astype(np.int64)
        assert (-(-seg // 8) * 8).sum() <= 512


@pytest.mark.parametrize("cp_size", [1, 2, 4])
def test_cp_ranks_split_every_batch_into_whole_shares(run, cp_size):
    ds = PackedShards(run)
    plain = list(PackedLoader(run, 2, rank=1, world_size=2, flatten=True))
    per_rank = [list(PackedLoader(run, 2, rank=1, world_size=2, flatten=True, cp_rank=r, cp_size=cp_size))
                for r in range(cp_size)] if cp_size > 1 else None
    if per_rank is None:
        return
    for step, b in enumerate(plain):
        shares = [per_rank[r][step] for r in range(cp_size)]
        assert len({s["input_ids"].shape[1] for s in shares}) == 1, "equal shares"
        cu_pad = shares[0]["cu_seqlens_padded"].numpy()
        T = int(cu_pad[-1])
        ids, labels, pos = np.full(T, -1), np.full(T, -7), np.full(T, -1)
        from packer.core.context_parallel import cp_indices

        for r, s in enumerate(shares):
            idx = cp_indices(cu_pad, r, cp_size)
            assert (ids[idx] == -1).all(), "every padded slot on exactly one rank"
            ids[idx], labels[idx], pos[idx] = s["input_ids"][0], s["labels"][0], s["position_ids"][0]
        cu = shares[0]["cu_seqlens"].numpy()
        assert np.array_equal(cu, b["cu_seqlens"].numpy()), "the real boundaries of the batch"
        real = np.concatenate([np.arange(a, a + n) for a, n in zip(cu_pad[:-1], np.diff(cu))])
        assert np.array_equal(ids[real], b["input_ids"][0].numpy())
        assert np.array_equal(labels[real], b["labels"][0].numpy())
        assert np.array_equal(pos[real], b["position_ids"][0].numpy())
        pad = np.setdiff1d(np.arange(T), real)
        assert (labels[pad] == -100).all(), "padding is inert"
        assert sum(s["num_loss_tokens"] for s in shares) == b["num_loss_tokens"]
        assert all(s["global_num_loss_tokens"] == b["global_num_loss_tokens"] for s in shares)


def test_cp_sizes_the_shards_were_not_planned_for_are_refused(run):
    with pytest.raises(ConfigError, match=r"planned for cp_size 4; open them with a cp_size that divides it \(1, 2, 4\)"):
        PackedLoader(run, 2, flatten=True, cp_rank=0, cp_size=3)
    with pytest.raises(ConfigError, match="drop flatten=False"):
        PackedLoader(run, 2, cp_rank=0, cp_size=2, flatten=False)
    assert PackedLoader(run, 2, cp_rank=1, cp_size=2).flatten, "CP batches are THD without asking"
    with pytest.raises(ConfigError, match="divisible by 2 x cp_size = 8"):
        C.PlanConfig(pack_len=500, cp_size=4)


def test_items_carry_real_and_padded_cu_seqlens(run):
    ds = PackedShards(run)
    assert ds.cp_size == 4
    it = ds[0]
    real, padded = np.diff(it["cu_seqlens"].numpy()), np.diff(it["cu_seqlens_padded"].numpy())
    assert np.all(padded % 8 == 0) and np.all(padded >= real) and np.all(padded - real < 8)
    assert int(it["cu_seqlens_padded"][-1]) <= ds.pack_len


def test_no_context_parallelism_costs_no_padding(tmp_path):
    from packer.core.context_parallel import padded_lengths

    assert np.array_equal(padded_lengths(np.array([1, 3, 5]), 1), [1, 3, 5])
    report = pack([str(write_jsonl(tmp_path / "d.jsonl", sft_records(40, seed=1)))], tmp_path / "r",
                  plan_config=C.PlanConfig(pack_len=512))
    assert report["cp_size"] == 1 and report["cp_padding_tokens"] == 0


@pytest.mark.parametrize("bad", ["4", 0, -2, True])
def test_a_damaged_cp_size_in_the_manifest_is_refused(run, tmp_path, bad):
    """Trust nothing on disk: cp_size read back from a (resealed) manifest must be a whole number >= 1."""
    import json
    import shutil

    from packer.core.errors import FormatError
    from packer.core.manifest import SEAL, seal

    shards = tmp_path / "shards"
    shutil.copytree(run / "shards", shards)
    m = json.loads((shards / "manifest.json").read_text())
    m["config"]["plan"]["cp_size"] = bad
    m.pop(SEAL)
    m[SEAL] = seal(m)
    (shards / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatError, match="config.plan.cp_size is"):
        PackedShards(shards, verify=False)
