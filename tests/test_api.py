"""The public API: every exported name resolves, says what it is, and is documented; one convention."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

import packer
from packer.core import config as C
from packer.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_every_exported_name_resolves_has_a_docstring_and_is_documented():
    docs = (ROOT / "README.md").read_text() + (ROOT / "docs" / "API.md").read_text()
    for name in packer.__all__:
        obj = getattr(packer, name)
        assert name in dir(packer)
        if callable(obj) or inspect.isclass(obj):
            assert (obj.__doc__ or "").strip(), f"packer.{name} has no docstring"
        assert f"`{name}`" in docs or f"`{name}(" in docs, f"packer.{name} is not in README.md or docs/API.md"


def _keywords(fn) -> set[str]:
    return {p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}


def test_helpers_take_config_field_names_and_refuse_unknown_ones(tmp_path):
    fields = {f.name for c in (C.TokenizeConfig, C.PlanConfig, C.WriteConfig) for f in dataclasses.fields(c)}
    own = {"out", "cache_dir", "label_mode", "input_labels", "vocab_size", "eos_id", "executor", "workers",
           "wait_seconds"}
    for fn in (packer.pack_dataset, packer.packed_dataset_from_files):
        assert _keywords(fn) <= own, f"{fn.__name__}: settings go through **options, named as config fields"
    exs = [{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}, {"input_ids": [6]}]
    one_each = packer.pack_dataset(exs, 16, max_segments=1, time_limit=1.0, algorithm="ortools")
    assert len(one_each) == 3, "max_segments reaches the planner"
    with pytest.raises(ConfigError, match="unknown option 'max_segment'.*max_segments"):
        packer.pack_dataset(exs, 16, max_segment=1)
    with pytest.raises(ConfigError, match="unknown option 'kind'"):
        packer.pack_dataset(exs, 16, kind="sft")  # a tokenize setting means nothing to tokenized examples
    data = tmp_path / "d.jsonl"
    data.write_text('{"query": "q", "response": "r"}\n{"query": "p", "response": "s"}\n')
    files = packer.packed_dataset_from_files([str(data)], "byte", 64, cache_dir=tmp_path / "c", max_segments=1, template="none",
                                             eos_token=None, shuffle=False)
    assert len(files) == 2
    with pytest.raises(ConfigError, match="unknown option 'response'"):
        packer.packed_dataset_from_files([str(data)], "byte", 64, cache_dir=tmp_path / "c", response="x")
    assert fields >= {"max_segments", "time_limit", "eos_token", "shuffle"}


def test_stages_share_one_signature_shape():
    """inputs..., out, config, then keywords only; each returns a Manifest."""
    for fn, inputs in ((packer.tokenize, ["inputs"]), (packer.plan_stage, ["tokenized"]),
                       (packer.write_stage, ["tokenized", "plan_dir"])):
        sig = inspect.signature(fn)
        positional = [p.name for p in sig.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert positional == inputs + ["out", "config"], fn.__name__
        assert "rehash" in _keywords(fn)
        assert sig.return_annotation in ("Manifest", packer.Manifest), fn.__name__


def test_short_paths_are_the_real_objects():
    """The documented short paths (packer.hf, packer.attention, packer.loss) re-export packer.train's
    objects themselves, so a monkeypatch or an isinstance check sees one object, and list every name."""
    import packer.attention
    import packer.hf
    import packer.loss
    import packer.preference
    from packer.train import attention, loss, preference
    from packer.train.hf import integration, preference as hf_preference, verify

    for short, homes in ((packer.hf, (integration, verify, hf_preference)), (packer.attention, (attention,)), (packer.loss, (loss,)),
                         (packer.preference, (preference,))):
        assert short.__all__, short.__name__
        for name in short.__all__:
            assert any(getattr(h, name, None) is getattr(short, name) for h in homes), f"{short.__name__}.{name}"
    docs = (ROOT / "docs" / "API.md").read_text()
    for short in (packer.hf, packer.attention, packer.loss, packer.preference):
        assert f"`{short.__name__}`" in docs
        for name in short.__all__:
            assert f"`{name}" in docs, f"{short.__name__}.{name} is not in docs/API.md"


def test_shardset_refuses_a_url_and_says_where_urls_go():
    with pytest.raises(ConfigError, match="PackedShards"):
        packer.ShardSet("s3://bucket/run")
