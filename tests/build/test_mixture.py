"""Weighted mixtures: weights multiply each source's examples in the plan stage (seeded, never
re-tokenizing), mixture files, the per-source report of asked vs achieved shares, and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from packer.core import config as C
from packer.cli import main
from packer.core.errors import ConfigError
from packer.build.mixture import read_mixture
from packer.pipeline import pack
from packer.build.plan import mixture_rows

from conftest import sft_records, write_jsonl


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=0, max_size=300),
       st.lists(st.floats(0, 4, allow_nan=False).map(lambda w: round(w, 2)), min_size=4, max_size=4),
       st.integers(0, 2**31))
def test_mixture_rows_repeat_whole_passes_plus_a_seeded_sample(source, weights, seed):
    source = np.asarray(source, np.int64)
    rows = mixture_rows(source, tuple(weights), seed, 4)
    assert np.all(np.diff(rows) >= 0), "data order, repeats adjacent"
    times = np.bincount(rows, minlength=len(source))
    for s, w in enumerate(weights):
        mine = times[source == s]
        n = len(mine)
        assert mine.sum() == int(w) * n + int(round((w - int(w)) * n)), "the weight's count of examples"
        assert np.all((mine == int(w)) | (mine == int(w) + 1)), "no example more than one extra time"
    assert np.array_equal(rows, mixture_rows(source, tuple(weights), seed, 4)), "same seed, same sample"


def test_no_weights_keep_everything_once_and_wrong_counts_are_refused():
    assert mixture_rows(np.array([0, 1, 1]), (), 0).tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match="2 weights for 3 input sources"):
        mixture_rows(np.array([0, 1, 2]), (1.0, 1.0), 0, 3)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mix")
    for name, seed, n in (("a", 1, 120), ("b", 2, 80), ("c", 3, 40)):
        write_jsonl(tmp / f"{name}.jsonl", sft_records(n, seed=seed))
    return tmp


def test_mixture_through_the_api(three):
    specs = [C.InputSpec(str(three / "a.jsonl"), weight=0.5), C.InputSpec(str(three / "b.jsonl")),
             C.InputSpec(str(three / "c.jsonl"), weight=3)]
    report = pack(specs, three / "api", plan_config=C.PlanConfig(pack_len=1024))
    per = {p["path"].rsplit("/", 1)[-1]: p for p in report["per_source"]}
    assert per["a.jsonl"]["trained_examples"] == 60 and per["b.jsonl"]["trained_examples"] == 80
    assert per["c.jsonl"]["trained_examples"] == 120
    assert abs(sum(p["share_asked"] for p in per.values()) - 1) < 1e-9
    assert abs(sum(p["share_achieved"] for p in per.values()) - 1) < 1e-9
    for p in per.values():  # nothing over-long here: achieved = asked up to which half of a.jsonl was drawn
        assert abs(p["share_achieved"] - p["share_asked"]) < 0.05, p
    assert per["b.jsonl"]["trained_loss_tokens"] == per["b.jsonl"]["loss_tokens"]
    assert per["c.jsonl"]["trained_loss_tokens"] == 3 * per["c.jsonl"]["loss_tokens"]
    tok = (three / "api" / "tokenized" / "manifest.json").stat().st_mtime_ns
    specs[0] = C.InputSpec(str(three / "a.jsonl"), weight=0.25)
    report2 = pack(specs, three / "api", plan_config=C.PlanConfig(pack_len=1024))
    assert (three / "api" / "tokenized" / "manifest.json").stat().st_mtime_ns == tok, "a weight never re-tokenizes"
    assert report2["per_source"][0]["trained_examples"] == 30
    assert "## Per source (mixture)" in (three / "api" / "report.md").read_text()


def test_mix_file_and_cli(three):
    (three / "mix.yaml").write_text("sources:\n  - path: a.jsonl\n    weight: 0.5\n  - path: b.jsonl\n"
                                    "  - path: c.jsonl\n    epochs: 3\n")
    (three / "mix.json").write_text(json.dumps({"sources": [{"path": "a.jsonl", "weight": 0.5}, {"path": "b.jsonl"},
                                                            {"path": "c.jsonl", "epochs": 3}]}))
    assert read_mixture(three / "mix.yaml") == read_mixture(three / "mix.json")
    specs = read_mixture(three / "mix.yaml")
    assert [s.weight for s in specs] == [0.5, 1.0, 3.0]
    assert specs[0].path == str(three / "a.jsonl"), "relative paths are relative to the mixture file"
    r = CliRunner().invoke(main, ["pack", "--mix", str(three / "mix.yaml"), "--out", str(three / "cli"),
                                  "--pack-len", "1024", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "c.jsonl: weight 3" in r.output and "(asked" in r.output
    rep = json.loads((three / "cli" / "report.json").read_text())
    assert [p["trained_examples"] for p in rep["per_source"]] == [60, 80, 120]


@pytest.mark.parametrize("text, match", [
    ("sources:\n  - path: a.jsonl\n    weight: -1\n", r"sources\[0\]: weight -1 must be a finite number >= 0"),
    ("sources:\n  - weight: 2\n", r"sources\[0\]: names no source"),
    ("sources:\n  - path: a.jsonl\n    wieght: 2\n", r"sources\[0\]: unknown key\(s\) wieght"),
    ("sources: []\n", "needs a non-empty list 'sources'"),
    ("sources:\n  - path: a.jsonl\n    weight: 1\n    epochs: 2\n", "give weight or epochs, not both"),
    ("sources:\n  - path: a.jsonl\n    fields: {question: q}\n", "'fields' maps query, response"),
])
def test_bad_mixtures_are_refused(tmp_path, text, match):
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_mixture(tmp_path / "m.yaml")


def test_bad_weights_on_paths_are_refused():
    with pytest.raises(ConfigError, match="weight is -0.5: it must be from 0 up to"):
        C.InputSpec.parse("a.jsonl#weight=-0.5")
    with pytest.raises(ConfigError, match="epochs '1.5' is not an integer number"):
        C.InputSpec.parse("a.jsonl#epochs=1.5")
    with pytest.raises(ConfigError, match="names no source"):
        C.InputSpec.parse("#weight=2")
    assert C.InputSpec.parse("s3://b/x.parquet#query=q,weight=2.5,format=sharegpt") == C.InputSpec(
        "s3://b/x.parquet", query_field="q", chat_format="sharegpt", weight=2.5)


def test_stage_by_stage_weights_go_to_packer_plan(three):
    run = str(three / "stages")
    r = CliRunner().invoke(main, ["tokenize", str(three / "a.jsonl"), f"{three / 'b.jsonl'}#weight=2", "--out", run])
    assert r.exit_code == 0 and f"packer plan {run} --weights 1,2" in r.output, r.output
    r = CliRunner().invoke(main, ["plan", run, "--pack-len", "1024", "--weights", "1,2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["write", run])
    assert r.exit_code == 0, r.output
    rep = json.loads((three / "stages" / "report.json").read_text())
    assert [p["trained_examples"] for p in rep["per_source"]] == [120, 160]
    assert [p["weight"] for p in rep["per_source"]] == [1.0, 2.0]
    r = CliRunner().invoke(main, ["plan", run, "--pack-len", "1024", "--weights", "1,2,3"])
    assert r.exit_code != 0 and "3 weights for 2 input sources" in r.output
