"""The layers hold (pyproject.toml's import-linter contracts, STYLE.md's tree), and building imports no torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]')")
    out = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "3 kept, 0 broken" in out.stdout


def test_building_shards_imports_no_torch():
    """Every module of core, build and exports, and the pipeline and CLI, imported for real: no torch or numba
    (the static contract above cannot see an import made through importlib)."""
    code = ("import importlib, pkgutil, sys, packer\n"
            "for pkg in ('packer.core', 'packer.build', 'packer.exports'):\n"
            "    p = importlib.import_module(pkg)\n"
            "    for m in pkgutil.walk_packages(p.__path__, pkg + '.'):\n"
            "        if not m.name.endswith('.ray'):\n"  # the Ray executor imports ray, which may import torch
            "            importlib.import_module(m.name)\n"
            "import packer.pipeline, packer.cli\n"
            "print(sorted(m for m in ('torch', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tree_has_only_the_layers():
    """The top of packer/ holds the entry modules, the short documented paths and the layer folders only:
    a new module goes into a layer, where the contracts see it."""
    top = sorted(p.name for p in (ROOT / "packer").iterdir() if not p.name.startswith(("_", ".")) or p.name == "__init__.py")
    assert top == ["__init__.py", "adapters", "attention.py", "build", "cli.py", "core", "exports", "from_examples.py",
                   "from_files.py", "hf.py", "loss.py", "pipeline.py", "preference.py", "train"]


def test_every_test_file_is_collected():
    """Every tests/**/test_*.py runs in `make test` (pytest skips folders named build unless told not to:
    tests/build/ mirrors packer/build/)."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True)
    # -q (with addopts' -q) prints "path: count" per file; more verbose forms print "path::test"
    collected = {line.split(":")[0] for line in out.stdout.splitlines() if line.split(":")[0].endswith(".py")}
    files = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")}
    assert files - collected == set()
