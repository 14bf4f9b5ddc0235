"""The command line: all stages, one stage at a time, and one-line errors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from packer.core import config as C
from packer.cli import main
from packer.train.reader import PackedShards

from conftest import sft_records, write_jsonl


def test_pack_then_stages_one_by_one(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": r["query"], "answer": r["response"]}
                                              for r in sft_records(40)])
    r = CliRunner().invoke(main, ["pack", str(data), "--out", str(tmp_path / "a"), "--pack-len", "256",
                                  "--query-field", "question", "--response-field", "answer"])
    assert r.exit_code == 0, r.output
    assert "efficiency" in r.output and "report.html" in r.output
    runner = CliRunner()
    args = ["--query-field", "question", "--response-field", "answer"]
    assert runner.invoke(main, ["tokenize", str(data), "--out", str(tmp_path / "b"), *args]).exit_code == 0
    assert runner.invoke(main, ["plan", str(tmp_path / "b"), "--pack-len", "256"]).exit_code == 0
    w = runner.invoke(main, ["write", str(tmp_path / "b")])
    assert w.exit_code == 0, w.output
    a_bytes = [p.read_bytes() for p in sorted((tmp_path / "a" / "shards").glob("*.bin"))]
    b_bytes = [p.read_bytes() for p in sorted((tmp_path / "b" / "shards").glob("*.bin"))]
    assert a_bytes == b_bytes
    assert len(PackedShards(tmp_path / "b")) == json.loads((tmp_path / "b" / "report.json").read_text())["num_packs"]
    v = runner.invoke(main, ["verify", str(tmp_path / "b")])
    assert v.exit_code == 0 and v.output.startswith("ok:")


def test_bad_input_is_one_line_error(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"query": "q", "response": "r"}, {"query": "q"}])
    r = CliRunner().invoke(main, ["pack", str(data), "--out", str(tmp_path / "o"), "--pack-len", "64"])
    assert r.exit_code == 1
    assert "d.jsonl:2: field 'response' missing (keys: query); pass --response-field" in r.output
    assert "Traceback" not in r.output


def test_unknown_algorithm_lists_choices(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"query": "q", "response": "r"}])
    r = CliRunner().invoke(main, ["pack", str(data), "--out", str(tmp_path / "o"), "--pack-len", "64",
                                  "--algorithm", "best"])
    # the choices come from the planners' registry (packer.build.planners.ALGORITHMS)
    assert r.exit_code == 2 and "'best' is not one of 'nextfit', 'ffd', 'bfd', 'ortools'" in r.output


def test_hub_tokenizer_name_offline_says_to_pass_a_file(tmp_path):
    import os
    import subprocess
    import sys

    import pytest

    pytest.importorskip("transformers")
    data = write_jsonl(tmp_path / "d.jsonl", [{"query": "q", "response": "r"}])
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "packer.cli", "pack", str(data), "--out", str(tmp_path / "o"),
                        "--pack-len", "64", "--tokenizer", "some-org/some-model"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 1
    assert "could not be loaded from the hub" in r.stderr and "pass a tokenizer.json path" in r.stderr


def test_inspect_marks_the_trained_tokens(tmp_path):
    from packer.pipeline import pack

    chats = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
             for i in range(3)]
    data = write_jsonl(tmp_path / "c.jsonl", chats)
    pack([str(data)], tmp_path / "run", tokenize_config=C.TokenizeConfig(kind="chat"),
         plan_config=C.PlanConfig(pack_len=256), write_config=C.WriteConfig(shuffle=False))
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "run"), "--pack", "0", "--plain"])
    assert r.exit_code == 0, r.output
    assert "3 segments" in r.output
    assert "<|im_start|>user\nq0<|im_end|>\n<|im_start|>assistant\n[[a0<|im_end|>\n<|endoftext|>]]" in r.output
    bad = CliRunner().invoke(main, ["inspect", str(tmp_path / "run"), "--pack", "7"])
    assert bad.exit_code != 0 and "--pack 7: the run has packs 0..0" in bad.output


def test_an_odd_pack_length_packs(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"query": f"q{i}", "response": "r" * i} for i in range(1, 40)])
    r = CliRunner().invoke(main, ["pack", str(data), "--out", str(tmp_path / "o"), "--pack-len", "1001", "--quiet"])
    assert r.exit_code == 0, r.output


def test_inspect_checks_the_pack_it_shows(tmp_path):
    """Before: `packer inspect` showed a pack without checking it; now it checks the run as every reader
    does (each file's sha256 once per run) and the pack's token ids."""
    data = write_jsonl(tmp_path / "d.jsonl", [{"query": f"q{i}", "response": "r" * i} for i in range(1, 40)])
    r = CliRunner().invoke(main, ["pack", str(data), "--out", str(tmp_path / "o"), "--pack-len", "1024", "--quiet"])
    assert r.exit_code == 0, r.output
    assert CliRunner().invoke(main, ["inspect", str(tmp_path / "o"), "--plain"]).exit_code == 0
    shard = tmp_path / "o" / "shards" / "shard-00000.bin"
    data = bytearray(shard.read_bytes())
    data[64] ^= 1  # the first token, still a valid id
    shard.write_bytes(bytes(data))
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "o"), "--plain"])
    assert r.exit_code == 1 and "shard-00000.bin: checksum differs" in r.output


def test_packing_and_loading_never_import_pandas(tmp_path):
    """pyarrow's converters and ortools' cp_model import pandas where it is installed (~50 MB of memory kept
    for the rest of the run); no stage, the CP-SAT merge and the loader use either."""
    import subprocess
    import sys

    import pytest

    pytest.importorskip("pandas")  # installed (ortools requires it): the check means something
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(300))
    code = f"""
import sys
import numpy as np
import packer
from packer.build.planners import ortools as planner
from packer.core import config as C
from packer.pipeline import pack
pack([{str(data)!r}], {str(tmp_path / 'run')!r}, tokenize_config=C.TokenizeConfig(),
     plan_config=C.PlanConfig(pack_len=256))
solve, merged = planner._solve, []
planner._solve = lambda *a: merged.append(solve(*a)[0] is not None) or solve(*a)
lengths = [10, 8, 7, 15, 11, 16, 13, 6, 8, 9, 5, 9, 17, 5, 14, 7, 4, 13, 9, 20, 11, 4, 9, 7, 8, 8, 20, 4, 11, 13, 8]
packer.plan(np.array(lengths), 23, "ortools", time_limit=0.5, max_segments=3)
assert any(merged), "CP-SAT merged no packs: the check would miss its import"
loader = packer.PackedLoader({str(tmp_path / 'run')!r}, batch_size=2)
next(iter(loader))
assert "pandas" not in sys.modules, "something imported pandas"
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
