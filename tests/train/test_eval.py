"""Evaluation packing: every example exactly once across ranks, equal steps per rank, and the packed
per-example eval loss equal to the unpacked one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from packer.core import config as C
from packer.train.reader import PackedShards
from packer.core.errors import ConfigError
from packer.train.loader import PackedLoader, eval_plan
from packer.train.loss import example_sources, mean_example_loss, per_example_loss
from packer.train.model import ModelConfig, PackedLlama
from packer.pipeline import pack
from packer.core.formats.tokenized import open_tokenized

from conftest import sft_records, write_jsonl
from hypothesis import given, settings, strategies as st


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    a = write_jsonl(tmp / "a.jsonl", sft_records(70, seed=1))
    b = write_jsonl(tmp / "b.jsonl", sft_records(45, seed=2))
    pack([str(a), str(b)], tmp / "run", plan_config=C.PlanConfig(pack_len=512))
    return tmp / "run"


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 60), st.integers(1, 5), st.integers(1, 4))
def test_eval_plan_covers_every_pack_once_with_equal_steps(n, batch_size, world_size):
    plan = eval_plan(n, batch_size, world_size)
    assert plan.shape[0] == world_size and plan.shape[2] == batch_size
    real = plan[plan >= 0]
    assert sorted(real.tolist()) == list(range(n)), "every pack exactly once, none dropped or repeated"
    assert plan.shape[1] == -(-n // (batch_size * world_size)), "no step more than needed"


def test_packed_eval_loss_equals_unpacked_per_example_average(run):
    torch.manual_seed(0)
    ds = PackedShards(run)
    model = PackedLlama(ModelConfig(vocab_size=ds.vocab_size, hidden=32, layers=2, heads=4, kv_heads=2,
                                    intermediate=64), backend="sdpa").double().eval()
    parts, steps, seen = [], [], []
    with torch.no_grad():
        for rank in range(2):
            loader = PackedLoader(run, 3, rank=rank, world_size=2, eval=True)
            steps.append(len(loader))
            for b in loader:
                logits = model(b["input_ids"], b["position_ids"], b["cu_seqlens"], b["max_seqlen"])
                parts.append(per_example_loss(logits, b["labels"], b["cu_seqlens"], b["example_index"]))
                seen += b["example_index"][b["example_index"] >= 0].tolist()
    assert steps[0] == steps[1], "every rank runs the same number of steps"
    meta, tables = open_tokenized(run / "tokenized")
    ids = np.concatenate([t.column("example_index").to_numpy() for t in tables])
    assert sorted(seen) == sorted(ids.tolist()), "every example exactly once across ranks"
    packed = mean_example_loss(*(torch.cat(x) for x in zip(*parts)), groups=example_sources(ds.manifest))
    # Unpacked: every example alone, its own positions, the same targets.
    ref, src = [], []
    with torch.no_grad():
        for t in tables:
            for row in t.to_pylist():
                x = torch.tensor(row["input_ids"], dtype=torch.int64)[None]
                m = torch.tensor(row["loss_mask"], dtype=torch.bool)[None]
                labels = torch.where(m, x, torch.full_like(x, -100))
                labels[0, 0] = -100
                logits = model(x, torch.arange(x.shape[1])[None], torch.tensor([0, x.shape[1]], dtype=torch.int32),
                               x.shape[1])
                lp = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100,
                                                       reduction="sum")
                ref.append(float(lp) / int((labels[0, 1:] != -100).sum()))
                src.append(int(row["file_index"]))
    assert packed["examples"] == len(ref)
    assert abs(packed["loss"] - float(np.mean(ref))) < 1e-6
    for k in (0, 1):
        mine = [r for r, s in zip(ref, src) if s == k]
        assert abs(packed["by_group"][k]["loss"] - float(np.mean(mine))) < 1e-6
        assert packed["by_group"][k]["examples"] == len(mine)


def test_eval_stand_in_packs_carry_no_loss(run):
    n = len(PackedShards(run))
    world = 4
    loader = PackedLoader(run, 2, rank=world - 1, world_size=world, eval=True)
    last = list(loader)[-1]
    empty = (last["pack_index"] == -1)
    assert empty.any(), "the case needs a stand-in slot on the last rank"
    assert n % (2 * world) != 0
    rows = last["labels"][empty]
    assert (rows == -100).all() and int(last["num_loss_tokens"]) == int((last["labels"] != -100).sum())


def test_eval_refuses_shuffle_and_drop_last(run):
    with pytest.raises(ConfigError, match="never shuffles"):
        PackedLoader(run, 2, eval=True, shuffle=True)
    with pytest.raises(ConfigError, match="never drops"):
        PackedLoader(run, 2, eval=True, drop_last=True)


def test_split_eval_packs_in_order_and_refuses_repeats_and_drops(tmp_path):
    from packer.cli import main
    from click.testing import CliRunner

    data = write_jsonl(tmp_path / "d.jsonl", sft_records(50, seed=4))
    pack([str(data)], tmp_path / "ev", plan_config=C.PlanConfig(pack_len=256), split="eval")
    import json
    assert json.loads((tmp_path / "ev" / "shards" / "manifest.json").read_text())["config"]["write"]["shuffle"] is False
    with pytest.raises(ConfigError, match="repeat"):
        pack([f"{data}#weight=2"], tmp_path / "ev2", plan_config=C.PlanConfig(pack_len=256), split="eval")
    r = CliRunner().invoke(main, ["pack", str(data), "--out", str(tmp_path / "ev3"), "--pack-len", "256",
                                  "--split", "eval", "--overlong", "drop", "--quiet"])
    assert r.exit_code != 0 and "leaves examples out" in r.output
