"""Adapters for accelerate, Lightning and torchtitan: the same batches per rank as PackedLoader, nothing
sharded twice, resume where it stopped, and each example trains on CPU."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from packer.core import config as C
from packer.train.reader import PackedShards
from packer.train.loader import PackedLoader
from packer.pipeline import pack
from packer.build.demo_data import write_sample

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapt")
    write_sample(tmp / "s.jsonl", n=150)
    pack([str(tmp / "s.jsonl")], tmp / "run", tokenizer="byte", plan_config=C.PlanConfig(pack_len=512))
    return tmp / "run"


def _ids(loader):
    return [b["pack_index"].tolist() for b in loader]


def test_accelerate_loader_is_this_ranks_share_and_prepare_leaves_it_alone(run):
    accelerate = pytest.importorskip("accelerate")
    from packer.adapters.accelerate import loader

    acc = accelerate.Accelerator(cpu=True)
    mine = loader(acc, str(run), 2)
    assert acc.prepare(mine) is mine, "prepare() must not wrap (and shard) an already rank-split loader"
    assert _ids(mine) == _ids(PackedLoader(run, 2))
    for rank in range(3):  # as on 3 processes: each gets PackedLoader's share for its rank
        fake = SimpleNamespace(process_index=rank, num_processes=3)
        assert _ids(loader(fake, str(run), 2)) == _ids(PackedLoader(run, 2, rank=rank, world_size=3))


def test_lightning_datamodule_resumes_where_it_stopped(run):
    pytest.importorskip("lightning")
    from packer.adapters.lightning import PackedDataModule

    whole = _ids(PackedDataModule(str(run), 2).train_dataloader())
    assert whole == _ids(PackedLoader(run, 2))
    dm = PackedDataModule(str(run), 2)
    it = iter(dm.train_dataloader())
    first = [next(it)["pack_index"].tolist() for _ in range(3)]
    state = dm.state_dict()
    again = PackedDataModule(str(run), 2)
    again.load_state_dict(state)
    assert first + _ids(again.train_dataloader()) == whole


def test_lightning_example_trains(run):
    pytest.importorskip("lightning")
    module = runpy.run_path(str(EXAMPLES / "lightning_train.py"))["main"]([str(run), "--steps", "6"])
    assert len(module.losses) == 6 and module.losses[-1] < module.losses[0]
    assert module.packs == _ids(PackedLoader(run, 2, flatten=True))[:6], "the trainer saw PackedLoader's batches"


def test_torchtitan_contract(run):
    from packer.adapters.torchtitan import TitanLoader

    ds = PackedShards(run, label_mode="shifted")
    titan = TitanLoader(str(run), 2, dp_rank=1, dp_world_size=2)
    batches = list(titan)
    plain = list(PackedLoader(run, 2, rank=1, world_size=2, label_mode="shifted"))
    assert len(batches) == len(plain) > 0
    for (inp, labels), b in zip(batches, plain):
        assert inp["input"].shape == labels.shape == b["input_ids"].shape
        for row, p in enumerate(b["pack_index"].tolist()):
            item = ds[p]
            n = len(item["input_ids"])
            assert torch.equal(inp["input"][row, :n], item["input_ids"])
            assert torch.equal(labels[row, :n], item["labels"]), "labels pre-shifted as torchtitan takes them"
            assert torch.equal(inp["position_ids"][row, :n], item["position_ids"]), "positions restart per document"
    it = iter(titan)
    next(it)
    state = titan.state_dict()
    assert list(state) == ["dp_rank_1"]
    rest = [x[0]["input"] for x in it]
    again = TitanLoader(str(run), 2, dp_rank=1, dp_world_size=2)
    again.load_state_dict(state)
    resumed = [x[0]["input"] for x in again]
    assert len(resumed) == len(rest) == len(batches) - 1
    assert all(torch.equal(a, b) for a, b in zip(rest, resumed)), "resume continues exactly"


@pytest.mark.parametrize("script", ["accelerate_train.py", "torchtitan_loop.py"])
def test_examples_train(run, script):
    if script.startswith("accelerate"):
        pytest.importorskip("accelerate")
    losses = runpy.run_path(str(EXAMPLES / script))["main"]([str(run), "--steps", "8"])
    assert len(losses) == 8 and losses[-1] < losses[0]


def test_lightning_checkpoint_resume_gives_the_uninterrupted_run(run, tmp_path):
    """Trainer.fit to step 3, save a checkpoint, fit again from it to step 6: the same batches and losses as
    one uninterrupted run to step 6 (Lightning saves and restores the data module's state_dict)."""
    L = pytest.importorskip("lightning")
    from packer.adapters.lightning import PackedDataModule

    Module = runpy.run_path(str(EXAMPLES / "lightning_train.py"))["Module"]
    vocab = int(PackedShards(run).manifest["tokenizer"]["vocab_size"])

    def trainer(steps):
        return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)

    torch.manual_seed(0)
    whole = Module(vocab)
    trainer(6).fit(whole, datamodule=PackedDataModule(str(run), 2, flatten=True))
    torch.manual_seed(0)
    first, t = Module(vocab), trainer(3)
    t.fit(first, datamodule=PackedDataModule(str(run), 2, flatten=True))
    t.save_checkpoint(tmp_path / "c.ckpt")
    second = Module(vocab)
    trainer(6).fit(second, datamodule=PackedDataModule(str(run), 2, flatten=True), ckpt_path=tmp_path / "c.ckpt")
    assert first.packs + second.packs == whole.packs
    assert first.losses + second.losses == pytest.approx(whole.losses, rel=1e-6)
