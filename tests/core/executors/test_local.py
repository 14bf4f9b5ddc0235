"""Executors are injected: any object with map(fn, items, initializer, initargs) in item order runs the
stages, and the shards are byte-identical whichever one ran them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from packer.core import config as C
from packer.core.errors import ConfigError
from packer.core.executors import LocalExecutor, resolve
from packer.pipeline import pack

from conftest import sft_records, write_jsonl


class ReversedExecutor:
    """Runs the items last to first (as a cluster might finish them) and yields them in item order."""

    def __init__(self):
        self.calls = 0

    def map(self, fn, items, initializer=None, initargs=()):
        if initializer is not None:
            initializer(*initargs)
        items = list(items)
        self.calls += 1
        done = {i: fn(item) for i, item in reversed(list(enumerate(items)))}
        return iter([done[i] for i in range(len(items))])


def _shards(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run / "shards").iterdir())}


def test_any_executor_gives_byte_identical_shards(tmp_path, byte_tok):
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(120, seed=3))
    cfgs = dict(tokenizer=byte_tok, tokenize_config=C.TokenizeConfig(chunk_records=16),
                plan_config=C.PlanConfig(pack_len=256), write_config=C.WriteConfig(shard_bytes=8000))
    pack([str(data)], tmp_path / "local", **cfgs)
    custom = ReversedExecutor()
    pack([str(data)], tmp_path / "custom", executor=custom, **cfgs)
    pack([str(data)], tmp_path / "pool", executor=LocalExecutor(2), **cfgs)
    assert custom.calls == 3, "counting the JSON Lines ranges, tokenize and write all ran on the executor given"
    assert len(_shards(tmp_path / "local")) > 2
    assert _shards(tmp_path / "local") == _shards(tmp_path / "custom") == _shards(tmp_path / "pool")


def test_resolve_refuses_what_it_cannot_run():
    assert resolve(None, 0) == LocalExecutor(0) and resolve(None, 3) == LocalExecutor(3)
    with pytest.raises(ConfigError, match="not both"):
        resolve(LocalExecutor(1), 2)
    with pytest.raises(ConfigError, match="no map"):
        resolve(object(), 0)
    with pytest.raises(ConfigError, match=r"workers \(--workers\) is -1: it must be from 0 to 1,024"):
        resolve(None, -1)
