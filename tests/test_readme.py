"""The README's code runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from packer import config as C
from packer.pipeline import pack
from packer.sample import write_sample

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(heading: str) -> str:
    text = README.read_text()
    part = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", part, re.S).group(1)


def test_training_loop_section_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_sample(tmp_path / "sample.jsonl", n=200)
    pack([str(tmp_path / "sample.jsonl")], tmp_path / "build" / "packed", tokenizer="byte",
         plan_config=C.PlanConfig(pack_len=512))
    scope: dict = {}
    exec(compile(section_code("Use the shards in your own training loop"), "README.md", "exec"), scope)
    assert scope["state"]["batches_yielded"] == 3
    assert scope["loss"].item() > 0


def test_plan_section_runs():
    scope: dict = {}
    exec(compile(section_code("Plan in Python"), "README.md", "exec"), scope)
    assert scope["p"].num_packs == 2


def test_trainer_section_runs(tmp_path, monkeypatch):
    import pytest

    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    monkeypatch.chdir(tmp_path)
    write_sample(tmp_path / "build" / "sample.jsonl", n=40)
    scope: dict = {}
    exec(compile(section_code("Hugging Face Trainer in a few lines"), "README.md", "exec"), scope)
    assert scope["model"].config._attn_implementation == "packer"
    assert len(scope["train"]) > 0
