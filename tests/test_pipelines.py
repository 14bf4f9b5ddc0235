"""Each recipe runs end to end on data made here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from packer.train.reader import PackedShards

from conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
@pytest.mark.parametrize("recipe,records", [
    ("sft", [{"query": "q", "response": "r"}] * 3),
    ("chat", [{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}] * 3),
    ("text", [{"text": "d" * 300}]),
    ("dpo", [{"prompt": f"q{i}", "chosen": " yes", "rejected": " no"} for i in range(4)]),
])
def test_recipe(tmp_path, recipe, records):
    data = write_jsonl(tmp_path / "d.jsonl", records)
    r = subprocess.run([sys.executable, "-m", f"pipelines.{recipe}", str(data), "--out", str(tmp_path / "o"),
                        "--pack-len", "256"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ds = PackedShards(tmp_path / "o")
    assert len(ds) >= 1
    if recipe == "text":
        assert ds.manifest["counts"]["split_examples"] == 1 and len(ds) == 2
    if recipe == "dpo":  # packed, reference log-probs stored beside the run, then three DPO steps
        assert ds.manifest["counts"]["preference"]["pairs"] == 4
        assert (tmp_path / "o" / "reference" / "reference.npz").is_file() and "'loss'" in r.stdout


def test_public_names_are_listed_and_load():
    import packer

    assert set(dir(packer)) == set(packer.__all__) | {"__version__"}, "dir(packer) shows the public API, only it"
    for name in packer.__all__:
        assert getattr(packer, name) is not None


def test_importing_packer_does_not_import_torch():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import packer, sys; dir(packer); print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
