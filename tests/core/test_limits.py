"""Every number is checked before anything is allocated or written: type, range, NaN and infinity, and
the limits of options whose memory grows with their value, with the limit and the reason in the error."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from packer.cli import main
from packer.core import config as C
from packer.core.errors import ConfigError

from conftest import write_jsonl


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", [{"query": f"q{i}", "response": "r" * i} for i in range(1, 30)])


@pytest.mark.parametrize("args,says", [
    (["--pack-len", "2147483648"], "--pack-len"),
    (["--pack-len", str(2**63)], "--pack-len"),
    (["--pack-len", "0"], "--pack-len"),
    (["--pack-len", "512", "--seed", "-1"], "--seed"),
    (["--pack-len", "512", "--shard-mb", "nan"], "--shard-mb"),
    (["--pack-len", "512", "--shard-mb", "inf"], "--shard-mb"),
    (["--pack-len", "512", "--shard-mb", "0"], "--shard-mb"),
    (["--pack-len", "512", "--baseline-batch", "0"], "--baseline-batch"),
    (["--pack-len", "512", "--baseline-batch", "-1"], "--baseline-batch"),
    (["--pack-len", "512", "--time-limit", "nan"], "--time-limit"),
    (["--pack-len", "512", "--time-limit", "-1"], "--time-limit"),
    (["--pack-len", "512", "--max-segments", "0"], "--max-segments"),
    (["--pack-len", "512", "--cp-size", "0"], "--cp-size"),
    (["--pack-len", "512", "--chunk-records", "0"], "--chunk-records"),
    (["--pack-len", "512", "--chunk-records", str(2**40)], "--chunk-records"),
    (["--pack-len", "512", "--workers", "-1"], "--workers"),
    (["--pack-len", "512", "--workers", "100000"], "--workers"),
])
def test_bad_numbers_are_refused_at_parse_time_with_no_traceback(tmp_path, data, args, says):
    r = CliRunner().invoke(main, ["pack", str(data), "--out", str(tmp_path / "o"), "--quiet", *args])
    assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "o").exists(), "nothing was written"


@pytest.mark.parametrize("weight,says", [("1e7", "weight is 1e+07: it must be from 0 up to 1e+06"),
                                         ("nan", "weight is nan: give a finite number"),
                                         ("inf", "give a finite number"), ("-1", "weight is -1")])
def test_bad_weights_are_refused_before_any_work(tmp_path, data, weight, says):
    r = CliRunner().invoke(main, ["pack", f"{data}#weight={weight}", "--out", str(tmp_path / "o"), "--pack-len", "64"])
    assert r.exit_code == 1 and says in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_a_mixture_too_big_for_the_machine_is_refused_before_it_is_allocated(tmp_path, byte_tok):
    """file#weight=1e7 was OOM-killed: a mixture's plan memory (~100 bytes an example) is compared with the
    machine's memory before any array of that size exists."""
    from packer.pipeline import pack

    many = write_jsonl(tmp_path / "m.jsonl", [{"query": "q", "response": str(i)} for i in range(5000)])
    with pytest.raises(ConfigError, match=r"ask for 5,000,000,000 examples, whose plan needs about"):
        pack([f"{many}#weight=1000000"], tmp_path / "o", tokenizer=byte_tok, plan_config=C.PlanConfig(pack_len=64))


def test_configs_check_their_numbers_in_python_too():
    for bad in (dict(pack_len=C.MAX_PACK_LEN + 1), dict(pack_len=True), dict(pack_len=512.5), dict(seed=-1),
                dict(pack_len=8, max_segments=9), dict(time_limit=float("nan")), dict(weights=(float("inf"),)),
                dict(pack_len=8, cp_size=5)):
        with pytest.raises(ConfigError):
            C.PlanConfig(**{"pack_len": 512, **bad})
    for bad in (dict(shard_bytes=0), dict(seed=-2), dict(shard_bytes=2**41)):
        with pytest.raises(ConfigError):
            C.WriteConfig(**bad)
    with pytest.raises(ConfigError, match=r"pack_len \(--pack-len\) is 4,194,305: it must be from 1 to 4,194,304 "
                                          r"\(the planners' histograms"):
        C.PlanConfig(pack_len=C.MAX_PACK_LEN + 1)
    assert C.PlanConfig(pack_len=C.MAX_PACK_LEN).pack_len == C.MAX_PACK_LEN
