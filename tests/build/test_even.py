"""Evening the packs' work (PlanConfig.even): the same packs and examples, each pack's work nearer the mean, every
capacity kept; and what it gives the loader: steps whose ranks' packs cost alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packer import pack
from packer.build.planners import plan
from packer.build.planners.even import even
from packer.core import config as C
from packer.core.cost import CostModel
from packer.core.errors import ConfigError
from packer.train.loader import PackedLoader

from conftest import write_jsonl


def _loads(order: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.add.reduceat(np.asarray(values)[order], offsets[:-1])


@settings(max_examples=150, deadline=None)
@given(st.data(), st.sampled_from(["tokens", "compute", "patches"]), st.sampled_from([None, 2, 5]))
def test_even_keeps_every_item_and_capacity_and_narrows_the_spread(data, by, max_segments):
    """Every item in exactly one pack, as many packs, each within pack_len (max_segments, the second capacity);
    the lightest pack no lighter and the heaviest no heavier than before; the same call gives the same packs."""
    pack_len = data.draw(st.integers(8, 200))
    lengths = np.array(data.draw(st.lists(st.integers(1, pack_len), min_size=1, max_size=80)), np.int64)
    p = plan(lengths, pack_len, "bfd", max_segments=max_segments)
    second = None
    if by == "tokens":
        work = lengths
    elif by == "compute":
        work = CostModel(1.0, ((data.draw(st.floats(1e-4, 1.0)), data.draw(st.sampled_from([None, 4, 50]))),)
                         ).segment_costs(lengths)
    else:  # patches as the work, bounded per pack: a cap every pack of the bfd plan already keeps
        work = np.array(data.draw(st.lists(st.integers(0, 9), min_size=len(lengths), max_size=len(lengths))), np.int64)
        second = (work, max(int(_loads(p.order, p.offsets, work).max()), 1))
    order, offsets = even(p.order, p.offsets, lengths, work, pack_len, max_segments=max_segments, second=second)
    assert sorted(order.tolist()) == list(range(len(lengths)))
    assert len(offsets) == len(p.offsets) and offsets[0] == 0 and offsets[-1] == len(lengths)
    assert (np.diff(offsets) >= 1).all()
    assert (_loads(order, offsets, lengths) <= pack_len).all()
    if max_segments is not None:
        assert np.diff(offsets).max() <= max_segments
    if second is not None:
        assert (_loads(order, offsets, second[0]) <= second[1]).all()
    before, after = _loads(p.order, p.offsets, work), _loads(order, offsets, work)
    assert after.min() >= before.min() - 1e-9 * abs(before.min()) - 1e-12
    assert after.max() <= before.max() + 1e-9 * abs(before.max()) + 1e-12
    again = even(p.order, p.offsets, lengths, work, pack_len, max_segments=max_segments, second=second)
    assert np.array_equal(again[0], order) and np.array_equal(again[1], offsets)


def test_a_light_last_pack_is_filled_from_the_others():
    """Long items leave bfd's last pack nearly empty; evened, every pack holds about the mean."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(300, 1500, 200)
    p = plan(lengths, 8192, "bfd")
    tok = _loads(p.order, p.offsets, lengths)
    assert tok.min() < 0.6 * tok.mean()
    order, offsets = even(p.order, p.offsets, lengths, lengths, 8192)
    tok = _loads(order, offsets, lengths)
    assert tok.min() > 0.97 * tok.mean() and tok.max() <= 8192


def _long_tail(tmp_path):
    """Examples of 150-550 tokens (byte tokenizer): packs of 4,096 hold about ten, bfd's last ones fewer."""
    recs = [{"query": "q " * 5, "response": "w " * (1 + (i * 37) % 200)} for i in range(800)]
    return write_jsonl(tmp_path / "d.jsonl", recs)


def test_evened_run_has_the_same_examples_and_packs_and_steps_that_cost_alike(tmp_path, byte_tok):
    data = _long_tail(tmp_path)
    runs = {}
    for by in ("none", "tokens", "compute"):
        att = ((1e-3, None),) if by == "compute" else ()
        runs[by] = tmp_path / by
        pack([str(data)], runs[by], tokenizer=byte_tok, plan_config=C.PlanConfig(
            pack_len=4096, algorithm="bfd", even=by, even_attention=att))
    manifests = {by: json.loads((r / "shards" / "manifest.json").read_text()) for by, r in runs.items()}
    assert len({m["counts"]["packs"] for m in manifests.values()}) == 1
    assert manifests["none"]["plan"]["even"] == {"by": "none"}
    ev = manifests["tokens"]["plan"]["even"]
    assert ev["by"] == "tokens" and ev["lightest"] > max(0.9, ev["lightest_before"]), ev
    report = json.loads((runs["tokens"] / "report.json").read_text())
    assert "packs evened (lightest pack's work / mean, before -> after) | by tokens: " in (
        runs["tokens"] / "report.md").read_text()
    assert report["even"] == ev and report["num_tokens"] == json.loads(
        (runs["none"] / "report.json").read_text())["num_tokens"]

    def examples(run):
        """(example index, its tokens, its loss mask) of every segment of every pack."""
        from packer.core.formats.shards import ShardSet

        ds, out = ShardSet(run), []
        for i in range(len(ds)):
            a = ds.arrays(i)
            cut = np.cumsum(a["seg_lens"])[:-1]
            out += [(int(e), t.tolist(), m.tolist()) for e, t, m in zip(
                a["example_index"], np.split(a["tokens"], cut), np.split(a["loss_mask"], cut))]
        return sorted(out)

    assert examples(runs["tokens"]) == examples(runs["none"])  # every example once, token for token
    plain = PackedLoader(runs["none"], 1, world_size=4, seed=0).imbalance()
    evened = PackedLoader(runs["tokens"], 1, world_size=4, seed=0).imbalance()
    assert evened["step_max"] < plain["step_max"] / 2, (plain, evened)
    model = CostModel(1.0, ((1e-3, None),))
    plain = PackedLoader(runs["none"], 1, world_size=4, seed=0, balance="compute", cost=model).imbalance()
    evened = PackedLoader(runs["compute"], 1, world_size=4, seed=0, balance="compute", cost=model).imbalance()
    assert evened["step_mean"] < plain["step_mean"] / 2, (plain, evened)


def test_even_options_that_would_be_ignored_or_are_not_built_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="even 'compute' needs the model's attention cost"):
        C.PlanConfig(even="compute")
    with pytest.raises(ConfigError, match="with --even tokens it would be ignored"):
        C.PlanConfig(even="tokens", even_attention=((1e-3, None),))
    with pytest.raises(ConfigError, match="even 'both' is not one of none, tokens, compute"):
        C.PlanConfig(even="both")
    with pytest.raises(ConfigError, match="even_attention weight"):
        C.PlanConfig(even="compute", even_attention=((0.0, None),))
    with pytest.raises(ConfigError, match="even_attention window"):
        C.PlanConfig(even="compute", even_attention=((1e-3, 0),))
    with pytest.raises(ConfigError, match="layout wrapped cuts documents at every pack_len tokens, so even would be "
                                          "ignored: drop --even"):
        C.PlanConfig(layout="wrapped", overlong="split", even="tokens")
    assert C.PlanConfig(even="compute", even_attention=[[1e-3, 128]]).even_attention == ((1e-3, 128),)


def test_cli_even_compute_reads_the_model_config(tmp_path, byte_tok):
    from click.testing import CliRunner

    from packer.cli import main

    data = _long_tail(tmp_path)
    cfg = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
           "vocab_size": 300}
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(cfg))
    base = ["pack", str(data), "--tokenizer", "byte", "--pack-len", "4096", "--quiet", "--algorithm", "bfd"]
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "r"), "--even", "compute", "--model-config",
                                         str(tmp_path / "model")])
    assert r.exit_code == 0, r.output
    assert "packs evened by compute: lightest" in r.output
    m = json.loads((tmp_path / "r" / "plan" / "manifest.json").read_text())
    from packer.core.cost import cost_model

    assert [tuple(t) for t in m["config"]["even_attention"]] == list(cost_model(cfg).relative())
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "r2"), "--even", "compute"])
    assert r.exit_code != 0 and "--model-config" in r.output
    (tmp_path / "bad.json").write_text("[1, 2]")
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "r3"), "--even", "compute", "--model-config",
                                         str(tmp_path / "bad.json")])
    assert r.exit_code != 0 and "bad.json: a model config is a JSON object" in r.output


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=65, max_size=300), st.integers(1, 16))
def test_the_extremes_are_the_ends_of_a_stable_sort_on_every_machine(loads, k):
    """Ties are the rule (many packs hold exactly pack_len): the packs tried must not depend on the CPU's
    partition code, so they are exactly the ends of a stable argsort."""
    from packer.build.planners.even import _extremes

    load = np.array(loads, np.int64)
    by = np.argsort(load, kind="stable")
    assert _extremes(load, k).tolist() == by[:k].tolist() + by[-k:].tolist()


def test_even_patches_never_empties_a_pack():
    """Making room moves a light pack's text-only items away; never its last one."""
    from packer.build.planners.two_capacities import even_patches, first_fit_two

    lengths, patches = np.array([8, 2, 8, 5]), np.array([0, 7, 0, 7])
    order, offsets = first_fit_two(lengths, patches, 16, 7, 2)
    order, offsets = even_patches(order, offsets, lengths, patches, 16, 7, 2)
    assert (np.diff(offsets) >= 1).all() and sorted(order.tolist()) == [0, 1, 2, 3]


def test_cli_even_compute_for_a_model_without_attention_says_to_even_tokens(tmp_path):
    from click.testing import CliRunner

    from packer.cli import main

    data = _long_tail(tmp_path)
    cfg = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
           "vocab_size": 300, "layer_types": ["mamba", "mamba"]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(main, ["pack", str(data), "--tokenizer", "byte", "--pack-len", "4096", "--quiet", "--out",
                                  str(tmp_path / "r"), "--even", "compute", "--model-config",
                                  str(tmp_path / "config.json")])
    assert r.exit_code != 0 and "no attention layers" in r.output and "--even tokens" in r.output, r.output
