"""Every Python block of the README runs as written, in order, after `make pack`'s run exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from packer.core import config as C
from packer.pipeline import pack
from packer.build.demo_data import write_sample

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> list[tuple[str, int, str]]:
    """(section heading, line, code) of every ```python block."""
    text = README.read_text()
    out, heading = [], ""
    for m in re.finditer(r"^## ([^\n]*)$|^```python\n(.*?)^```", text, re.M | re.S):
        if m.group(1):
            heading = m.group(1)
        else:
            out.append((heading, text[:m.start()].count("\n") + 2, m.group(2)))
    return out


def test_the_readme_has_python_blocks():
    assert len(blocks()) >= 5


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """What `make pack` leaves: build/sample.jsonl and the run build/packed (the Makefile's defaults)."""
    root = tmp_path_factory.mktemp("readme")
    write_sample(root / "build" / "sample.jsonl", n=200)
    pack([str(root / "build" / "sample.jsonl")], root / "build" / "packed", tokenizer="byte",
         plan_config=C.PlanConfig(pack_len=2048))
    return root


@pytest.mark.parametrize("heading,line,code", blocks(), ids=[f"line{b[1]}" for b in blocks()])
def test_readme_block_runs(made, monkeypatch, heading, line, code):
    if "transformers" in code:
        pytest.importorskip("transformers")
        pytest.importorskip("accelerate")
    monkeypatch.chdir(made)
    scope: dict = {}
    exec(compile("\n" * (line - 1) + code, str(README), "exec"), scope)
    if heading.startswith("Use the shards"):
        assert scope["state"]["batches_yielded"] == 3 and scope["loss"].item() > 0
    if heading.startswith("Export for other trainers"):
        assert len(scope["row"]["input_ids"]) == scope["row"]["cu_seqlens"][-1] > 0
    if heading.startswith("Plan in Python"):
        assert scope["p"].num_packs == 2
    if heading.startswith("Read the shards"):
        assert int(scope["item"]["cu_seqlens"][-1]) == len(scope["item"]["input_ids"])
    if heading.startswith("Hugging Face Trainer"):
        assert scope["model"].config._attn_implementation == "packer" and len(scope["train"]) > 0
    if heading.startswith("Attention and models"):
        assert scope["out"].loss.item() > 0
