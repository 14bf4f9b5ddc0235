"""Compute-balanced steps: a model's cost (a x tokens + b x sum L^2) from its config, and ranks that wait less."""

from __future__ import annotations

import random

import numpy as np
import pytest

from packer.core import config as C
from packer.core.errors import ConfigError
from packer.pipeline import pack
from packer.core.cost import CostModel, cost_model
from packer.train.loader import PackedLoader, imbalance, pack_costs

from conftest import write_jsonl

LLAMA = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
         "intermediate_size": 14336, "vocab_size": 128256}


def test_llama_cost_is_the_textbook_count():
    m = cost_model(LLAMA)
    H, n, d = 4096, 32, 128
    proj = 2 * H * (32 * d + 2 * 8 * d) + 2 * 32 * d * H
    assert m.per_token == 3 * (n * (proj + 6 * H * 14336) + 2 * H * 128256)
    assert m.pairs == ((3.0 * 4 * 32 * d * n, None),)
    # one segment of L tokens: a L + b L^2 / 2
    L = 8192
    assert m(np.array([L]), np.array([0, 1]))[0] == pytest.approx(m.per_token * L + m.pairs[0][0] * L * L / 2)


def test_hybrid_and_sliding_layers_count_only_their_attention():
    cfg = dict(LLAMA, layer_types=["linear_attention"] * 24 + ["full_attention"] * 4 + ["sliding_attention"] * 4,
               sliding_window=1024)
    m = cost_model(cfg)
    assert dict((w, b) for b, w in m.pairs) == {None: 3.0 * 4 * 4096 * 4, 1024: 3.0 * 4 * 4096 * 4}
    one = m(np.array([4096]), np.array([0, 1]))[0]
    assert one == pytest.approx(m.per_token * 4096 + m.pairs[0][0] * 4096 ** 2 / 2 + m.pairs[1][0] * 4096 * 1024 / 2)


def test_configs_without_the_numbers_are_refused():
    with pytest.raises(ConfigError, match="needs hidden_size"):
        cost_model({"vocab_size": 10})
    with pytest.raises(ConfigError, match="sliding_window"):
        cost_model(dict(LLAMA, layer_types=["sliding_attention"] * 32))


@pytest.fixture(scope="module")
def long_tailed(tmp_path_factory, byte_tok):
    rng = random.Random(3)
    tmp = tmp_path_factory.mktemp("cost")
    recs = [{"query": "q", "response": "x" * min(4000, int(rng.paretovariate(1.1) * 40))} for _ in range(3000)]
    data = write_jsonl(tmp / "d.jsonl", recs)
    pack([str(data)], tmp / "r", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=4096, algorithm="bfd"))
    return tmp / "r"


def test_compute_balance_makes_ranks_wait_less_than_token_balance(long_tailed):
    model = cost_model(dict(LLAMA, hidden_size=512, num_attention_heads=8, num_key_value_heads=8,
                            intermediate_size=1408, num_hidden_layers=4, vocab_size=32000))
    by_tokens = PackedLoader(long_tailed, 2, world_size=4, seed=0)
    by_compute = PackedLoader(long_tailed, 2, world_size=4, seed=0, balance=model)
    true_cost = pack_costs(by_tokens.dataset, model)
    a = imbalance(true_cost, by_tokens._plan())["step_mean"]
    b = imbalance(true_cost, by_compute._plan())["step_mean"]
    print(f"\nmean step imbalance in real compute (max rank / mean - 1): tokens-balanced {a:.3f}, "
          f"compute-balanced {b:.3f}")
    assert b < a
    # the same packs each step, whatever the balance: only which rank reads which changes
    assert (np.sort(by_tokens._plan(), axis=None) == np.sort(by_compute._plan(), axis=None)).all()
    assert by_compute.state_dict()["balance"].startswith("compute(")


def test_compute_without_a_model_is_refused(long_tailed):
    with pytest.raises(ConfigError, match="cost_model"):
        PackedLoader(long_tailed, 2, balance="compute")
    assert isinstance(cost_model(LLAMA), CostModel)


def test_compute_balance_by_name_with_the_model_or_explicit_numbers(long_tailed):
    model = cost_model(LLAMA)
    by_name = PackedLoader(long_tailed, 2, world_size=4, seed=0, balance="compute", cost=model)
    by_object = PackedLoader(long_tailed, 2, world_size=4, seed=0, balance=model)
    assert (by_name._plan() == by_object._plan()).all()
    explicit = PackedLoader(long_tailed, 2, world_size=4, seed=0, balance="compute", cost=(1.0, 0.5))
    ds = explicit.dataset
    sh = ds.shards[0]
    L = sh.segment_lengths[sh.pack_segment_offsets[0]:sh.pack_segment_offsets[1]].astype(float)
    assert explicit.costs[0] == pytest.approx(L.sum() + 0.5 * (L ** 2).sum())  # a x tokens + b x sum L^2
    with pytest.raises(ConfigError, match="cost= is the model's cost for balance='compute'"):
        PackedLoader(long_tailed, 2, cost=model)


def test_step_denominators_are_summed_over_every_rank(long_tailed):
    """Per step, every rank's batch carries the same global tokens, loss tokens and examples: the sums of all
    ranks' own counts, so a loss normalized by any of them is exact wherever a pack lands."""
    loaders = [PackedLoader(long_tailed, 2, rank=r, world_size=3, seed=1) for r in range(3)]
    steps = list(zip(*[list(ld) for ld in loaders]))
    assert steps
    for batches in steps:
        for key, own in (("global_num_tokens", "num_tokens"), ("global_num_loss_tokens", "num_loss_tokens")):
            assert len({b[key] for b in batches}) == 1 and batches[0][key] == sum(b[own] for b in batches)
        ds = loaders[0].dataset
        examples = sum(len(ds.arrays(p)["seg_lens"]) for b in batches for p in b["pack_index"].tolist())
        assert {b["global_num_examples"] for b in batches} == {examples}
