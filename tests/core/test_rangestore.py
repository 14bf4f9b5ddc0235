"""Streaming a committed run from a real S3-compatible server (moto, server mode) by byte range: only the
packs a rank reads are fetched, each checked; the local cache stays under cache_limit; a damaged range, a
replaced run and an unreachable store are refused with what to do."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from packer.core import config as C
from packer.core.errors import ConfigError, FormatError, InputError
from packer.pipeline import pack

from conftest import sft_records, write_jsonl

pytestmark = pytest.mark.slow
PLAN = C.PlanConfig(pack_len=512)
WRITE = C.WriteConfig(shard_bytes=96 << 10)


@pytest.fixture(scope="module")
def run(s3, tmp_path_factory):
    """One run, packed locally and published to s3://streams/r (the same bytes)."""
    tmp = tmp_path_factory.mktemp("stream")
    os.environ["PACKER_CACHE"] = str(tmp / "cache")
    s3.exists("streams") or s3.mkdir("streams")
    data = write_jsonl(tmp / "d.jsonl", sft_records(900, seed=5, long_every=40))
    pack([str(data)], tmp / "local", plan_config=PLAN, write_config=WRITE)
    pack([str(data)], "s3://streams/r", plan_config=PLAN, write_config=WRITE)
    return tmp / "local", "s3://streams/r"


def _batches(loader, n=None):
    out = []
    for i, b in enumerate(loader):
        if n is not None and i == n:
            break
        out.append((b["pack_index"].tolist(), b["input_ids"].tolist(), b["labels"].tolist(),
                    b["global_num_loss_tokens"]))
    return out


def _disk(folder: Path) -> int:
    """Bytes the cache's shard copies take on disk (sparse files: allocated blocks only)."""
    return sum(p.stat().st_blocks * 512 for p in folder.glob("shard-*.bin"))


def test_a_rank_fetches_only_the_packs_it_reads(run, monkeypatch, tmp_path):
    from packer.train.loader import PackedLoader

    local, url = run
    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    ref = PackedLoader(local, 2, rank=1, world_size=4, seed=3)
    remote = PackedLoader(url, 2, rank=1, world_size=4, seed=3)
    steps = max(1, len(remote) // 10)  # 10% of the epoch
    assert _batches(remote, steps) == _batches(ref, steps)
    st = remote.dataset.ranges.stats()
    heads = sum(sh.head for sh in remote.dataset.shards)
    total = sum(int(json.loads((local / "shards" / "manifest.json").read_text())["files"][f]["bytes"])
                for f in remote.dataset.ranges.run.files)
    pack_bytes = st["bytes_fetched"] - heads
    # what it read, plus what the read-ahead fetched for the next batches (at most the rest of its epoch)
    assert st["bytes_of_packs_read"] <= pack_bytes <= total - heads
    assert pack_bytes < 0.5 * (total - heads), "a rank reading 10% of its quarter fetched half of the run"


@pytest.fixture(scope="module")
def long_run(s3, tmp_path_factory):
    """Packs of 8192 tokens (several pages each), so the disk the cache takes can be measured."""
    tmp = tmp_path_factory.mktemp("stream_long")
    s3.exists("streams") or s3.mkdir("streams")
    data = write_jsonl(tmp / "d.jsonl", sft_records(1500, seed=6, long_every=5))
    cfg = C.PlanConfig(pack_len=8192)
    pack([str(data)], tmp / "local", plan_config=cfg, write_config=C.WriteConfig(shard_bytes=1 << 20))
    pack([str(data)], "s3://streams/long", plan_config=cfg, write_config=C.WriteConfig(shard_bytes=1 << 20))
    return tmp / "local", "s3://streams/long"


def test_read_ahead_stops_at_the_cache_limit_and_evicted_packs_come_back_equal(long_run, monkeypatch, tmp_path):
    from packer.train.loader import PackedLoader

    local, url = long_run
    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    ref = _batches(PackedLoader(local, 2, seed=1, prefetch=2))
    for limit_batches in (1, 3):
        probe = PackedLoader(url, 2, seed=1, cache_limit=None)
        sizes = np.sort(probe.dataset.ranges.pack_bytes)[::-1]
        limit = int(sizes[:2].sum()) * limit_batches
        remote = PackedLoader(url, 2, seed=1, prefetch=2, cache_limit=limit)
        got, held, disk = [], [], []
        folder = remote.dataset.ranges.run.folder
        heads = _disk(folder)  # before any pack: the heads alone
        for b in remote:
            got.append((b["pack_index"].tolist(), b["input_ids"].tolist(), b["labels"].tolist(),
                        b["global_num_loss_tokens"]))
            held.append(remote.dataset.ranges.held)
            disk.append(_disk(folder) - heads)
        assert got == ref, f"limit of {limit_batches} batches: other batches than the local run's"
        assert max(held) <= limit
        edges = 2 * 4096 * 2 * len(remote.dataset.shards)  # a page at each end of each array's region
        assert max(disk) <= limit + edges + 4 * 4096 * 6, (max(disk), limit)
        total = int(probe.dataset.ranges.pack_bytes.sum())
        assert limit < total / 2, "the limit must be well below the run for this test to mean anything"


def test_a_cache_limit_below_one_batch_is_refused_at_construction(run):
    from packer.train.loader import PackedLoader
    from packer.train.reader import PackedShards

    _, url = run
    sizes = np.sort(PackedShards(url, cache_limit=None).ranges.pack_bytes)[::-1]
    with pytest.raises(ConfigError, match=r"cache_limit=.* is smaller than one batch of batch_size=4"):
        PackedLoader(url, 4, cache_limit=int(sizes[:4].sum()) - 1)
    with pytest.raises(ConfigError, match="is smaller than the largest pack"):
        PackedShards(url, cache_limit=int(sizes[0]) - 1)
    with pytest.raises(ConfigError, match="cache_limit=-5"):
        PackedShards(url, cache_limit=-5)
    PackedLoader(url, 4, cache_limit=int(sizes[:4].sum()))


def test_every_worker_and_the_cp_path_read_checked_packs(run, monkeypatch, tmp_path):
    """DataLoader worker processes open the URL themselves (never the bare sparse copy)."""
    from packer.train.loader import PackedLoader

    local, url = run
    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    assert _batches(PackedLoader(url, 2, seed=4, num_workers=2)) == _batches(PackedLoader(local, 2, seed=4))
    remote = PackedLoader(url, 2, seed=4, eval=True)
    assert [b["example_index"].tolist() for b in remote] == [b["example_index"].tolist()
                                                             for b in PackedLoader(local, 2, seed=4, eval=True)]


def test_elastic_resume_on_a_streamed_run(run, monkeypatch, tmp_path):
    from packer.train.loader import PackedLoader

    _, url = run
    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    seen = []
    ranks = [PackedLoader(url, 2, rank=r, world_size=2, seed=9) for r in range(2)]
    its = [iter(x) for x in ranks]
    for _ in range(3):
        for it in its:
            seen += next(it)["pack_index"].tolist()
    state = ranks[0].state_dict()
    for r in range(3):
        new = PackedLoader(url, 1, rank=r, world_size=3, seed=9)
        new.load_state_dict(state)
        seen += [p for b in new for p in b["pack_index"].tolist()]
    n = len(ranks[0].dataset)
    counts = np.bincount(seen, minlength=n)
    assert counts.max() == 1 and counts.sum() == n - (n - 12) % 3  # each pack once; the last partial step dropped


def test_a_run_replaced_while_reading_is_refused(s3, tmp_path, monkeypatch):
    from packer.train.reader import PackedShards

    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    s3.exists("streams") or s3.mkdir("streams")
    a = write_jsonl(tmp_path / "a.jsonl", sft_records(200, seed=1))
    b = write_jsonl(tmp_path / "b.jsonl", sft_records(230, seed=2))
    pack([str(a)], "s3://streams/replaced", plan_config=PLAN, write_config=WRITE)
    ds = PackedShards("s3://streams/replaced", cache_limit=None)
    ds[0]
    pack([str(b)], "s3://streams/replaced", plan_config=PLAN, write_config=WRITE)
    with pytest.raises(FormatError, match="was replaced .* while this reader read it"):
        for i in range(len(ds)):
            ds[i]
    assert len(PackedShards("s3://streams/replaced")) > 0  # a new reader reads the new run


def test_a_byte_identical_rerun_at_the_url_reads_on_and_a_damaged_pack_is_not_called_a_replacement(s3, tmp_path,
                                                                                                   monkeypatch):
    """Same inputs, config and seed give the same bytes: a reader open while such a re-run is published reads on
    (nothing to mix). A pack damaged in the store is named as damaged, not as a replaced run."""
    from packer.train.reader import PackedShards

    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    s3.exists("streams") or s3.mkdir("streams")
    a = write_jsonl(tmp_path / "a.jsonl", sft_records(200, seed=1))
    pack([str(a)], "s3://streams/again", plan_config=PLAN, write_config=WRITE)
    ds = PackedShards("s3://streams/again", cache_limit=None)
    first = ds[0]["input_ids"].tolist()
    pack([str(a)], tmp_path / "same", plan_config=PLAN, write_config=WRITE)
    for f in sorted((tmp_path / "same" / "shards").iterdir()):  # the re-run published over it, manifest last
        if f.name != "manifest.json":
            s3.pipe(f"streams/again/shards/{f.name}", f.read_bytes())
    s3.pipe("streams/again/shards/manifest.json", (tmp_path / "same" / "shards" / "manifest.json").read_bytes())
    assert [ds[i]["input_ids"].tolist() for i in range(len(ds))][0] == first
    ds2 = PackedShards("s3://streams/again", cache_limit=None)
    name = sorted(p for p in s3.ls("streams/again/shards") if p.endswith(".bin"))[-1]
    data = bytearray(s3.cat_file(name))
    data[-1] ^= 0xFF  # the last pack's last mask byte
    s3.pipe(name, bytes(data))
    with pytest.raises(FormatError, match="fails its checksum after a second fetch: the object is damaged"):
        for i in range(len(ds2)):
            ds2[i]


def test_an_unreachable_store_says_what_was_tried(monkeypatch, tmp_path):
    pytest.importorskip("s3fs")
    from packer.train.reader import PackedShards
    import s3fs

    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(InputError, match=r"unreachable \(tried endpoint http://127.0.0.1:9"):
            PackedShards("s3://nowhere/run")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_evicting_small_packs_never_zeroes_a_held_neighbour(tmp_path, monkeypatch):
    """Packs far smaller than a page (pack_len 512: a mask range of a few hundred bytes, several a page):
    eviction frees whole pages only up to the nearest held or coming pack, so every batch still equals the
    local run's. (fsspec's memory:// store: the same code path as s3://, without a server.)"""
    import fsspec

    from packer.train.loader import PackedLoader

    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(900, seed=5, long_every=40))
    pack([str(data)], tmp_path / "local", plan_config=PLAN)
    fs = fsspec.filesystem("memory")
    for f in (tmp_path / "local" / "shards").iterdir():
        fs.pipe(f"/smallpacks/r/shards/{f.name}", f.read_bytes())
    try:
        for prefetch in (0, 2):
            remote = PackedLoader("memory://smallpacks/r", 2, seed=3, prefetch=prefetch, cache_limit=40000)
            assert _batches(remote) == _batches(PackedLoader(tmp_path / "local", 2, seed=3)), f"prefetch={prefetch}"
            assert remote.dataset.ranges.held <= 40000
    finally:
        fs.rm("/smallpacks", recursive=True)


def test_an_outer_dataloaders_forked_workers_open_the_url_themselves(run, monkeypatch, tmp_path):
    import torch

    from packer.train.loader import PackedLoader

    local, url = run
    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    remote = PackedLoader(url, 2, seed=5, cache_limit=1 << 20)
    remote.dataset[0]  # the parent has a cache with a pack in it, and maps of its own, before the workers fork
    got = [(b["pack_index"].tolist(), b["input_ids"].tolist()) for b in
           torch.utils.data.DataLoader(remote, batch_size=None, num_workers=2)]
    want = [(b["pack_index"].tolist(), b["input_ids"].tolist()) for b in PackedLoader(local, 2, seed=5)]
    assert got == want


def test_opening_takes_two_requests_and_a_damaged_heads_bin_is_named(run, s3, monkeypatch, tmp_path):
    """The commit object and heads.bin (every shard's head, end to end): two requests before the first batch's
    packs, whatever the number of shards; a heads.bin whose bytes differ from a head_sha256 is refused, naming it
    and the shard."""
    from packer.train.reader import PackedShards

    local, url = run
    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    ds = PackedShards(url, cache_limit=None)
    assert len(ds.shards) >= 3 and ds.ranges.stats()["requests"] == 1  # heads.bin (the commit object is not a range)
    assert ds[0]["input_ids"].tolist() == PackedShards(local)[0]["input_ids"].tolist()
    s3.exists("streams") or s3.mkdir("streams")
    for f in sorted((local / "shards").iterdir()):
        s3.pipe(f"streams/heads/shards/{f.name}", f.read_bytes())
    heads = bytearray((local / "shards" / "heads.bin").read_bytes())
    heads[ds.shards[0].head + 70] ^= 0x01  # a byte of shard 1's metadata (past its 64-byte header)
    s3.pipe("streams/heads/shards/heads.bin", bytes(heads))
    s3.pipe("streams/heads/shards/manifest.json", (local / "shards" / "manifest.json").read_bytes())
    with pytest.raises(FormatError, match=r"heads\.bin: the head \(header and metadata\) of shard-00001\.bin there "
                                          r"differs from the run's manifest"):
        PackedShards("s3://streams/heads", cache_limit=None)
    from packer.core.manifest import SEAL, seal

    old = {k: v for k, v in json.loads((local / "shards" / "manifest.json").read_text()).items() if k != SEAL}
    old["version"] = 6
    s3.pipe("streams/heads/shards/manifest.json", json.dumps({**old, SEAL: seal(old)}).encode())
    with pytest.raises(FormatError, match=r"version 6 is not the supported 7.*re-run"):
        PackedShards("s3://streams/heads", cache_limit=None)


def test_shuffle_blocks_fetches_a_batch_in_two_requests_a_run(run, monkeypatch, tmp_path):
    """shuffle_blocks: a batch is one run of neighbouring packs, so it costs two range requests (its tokens, its
    loss masks) per shard it touches, not two per pack; the batches equal the local run's."""
    from packer.train.loader import PackedLoader

    local, url = run
    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    kw = dict(rank=1, world_size=2, seed=3, shuffle_blocks=8, read_ahead=0, cache_limit=None)
    remote = PackedLoader(url, 4, **kw)
    opened = remote.dataset.ranges.stats()["requests"]
    got = _batches(remote)
    assert got == _batches(PackedLoader(local, 4, **kw))
    shard_of = remote.dataset.ranges._shard_of
    pieces = sum(len({(int(shard_of[p]), p - i) for i, p in enumerate(sorted(b))}) for b, *_ in got)
    assert pieces <= 1.5 * len(got), "the batches are not runs of neighbours"
    assert remote.dataset.ranges.stats()["requests"] - opened == 2 * pieces
    plain = PackedLoader(url, 4, **{**kw, "shuffle_blocks": 0})
    opened = plain.dataset.ranges.stats()["requests"]
    _batches(plain)
    assert plain.dataset.ranges.stats()["requests"] - opened > 3 * 2 * pieces


def test_a_read_ahead_that_fell_behind_fetches_the_window_in_one_round(run, monkeypatch, tmp_path):
    """Each round of the read-ahead fetches every batch inside its window: on a store slower per round trip than a
    step, its rate is the window's per round trip, not one batch's. The batches are the local run's."""
    import threading
    import time

    from packer.core.rangestore import RangeReader, RemoteRun
    from packer.train.loader import PackedLoader

    local, url = run
    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    cat, fetch, rounds = RemoteRun._cat, RangeReader._fetch_claimed, []

    def slow(self, *a):
        time.sleep(0.2)
        return cat(self, *a)

    def counted(self, packs, **kw):
        if threading.current_thread().name == "packer-read-ahead":
            rounds.append(len(packs))
        return fetch(self, packs, **kw)

    monkeypatch.setattr(RemoteRun, "_cat", slow)
    monkeypatch.setattr(RangeReader, "_fetch_claimed", counted)
    kw = dict(rank=0, world_size=2, seed=3, read_ahead=4, cache_limit=None)
    assert _batches(PackedLoader(url, 2, **kw), 8) == _batches(PackedLoader(local, 2, **kw), 8)
    assert rounds and max(rounds) >= 3 * 2, f"one batch a round ({rounds})"
    assert rounds[0] == 2, "the batch the builder reads first waited for the batches after it"


def _store_that_takes(seconds, local: Path, serial: bool = False):
    """RemoteRun._cat for the read-ahead tests: each call (one round of range requests) takes seconds(ranges)
    and returns the ranges' bytes from the local copy of the same run (byte-identical to the published one;
    the moto server still serves the manifest and heads). The store's time is then the test's, not moto's on
    a loaded machine, whose cost per request would blur a round trip into a rate. serial: one call at a time."""
    import threading
    import time

    lock = threading.Lock() if serial else None

    def cat(self, paths, starts, ends):
        if lock is not None:
            with lock:
                time.sleep(seconds(len(paths)))
        else:
            time.sleep(seconds(len(paths)))
        out = []
        for path, a, b in zip(paths, starts, ends):
            with open(local / "shards" / path.rsplit("/", 1)[-1], "rb") as f:
                f.seek(a)
                out.append(f.read(b - a))
        self.requests += len(paths)
        self.bytes_fetched += sum(len(x) for x in out)
        return out
    return cat


def test_the_read_ahead_widens_while_the_builder_waits_and_stays_within_the_cache(run, monkeypatch, tmp_path):
    """A store whose round trip outlasts the window's steps (each call takes as long, however many ranges): a
    batch the builder still finds unfetched, a window's batches after the last doubling, doubles the window up to
    8 x read_ahead; the bytes held never pass cache_limit, and the batches are the local run's."""

    from packer.core.rangestore import RemoteRun
    from packer.train.loader import PackedLoader

    local, url = run
    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(RemoteRun, "_cat", _store_that_takes(lambda ranges: 0.05, local))
    kw = dict(rank=0, world_size=2, seed=3, read_ahead=1)
    probe = PackedLoader(url, 2, **kw, cache_limit=None)
    limit = int(np.sort(probe.dataset.ranges.pack_bytes)[::-1][:2].sum()) * 6
    remote = PackedLoader(url, 2, **kw, cache_limit=limit)
    got, held = [], []
    for b in remote:  # no compute step: the builder is always at the read-ahead's heels
        got.append((b["pack_index"].tolist(), b["input_ids"].tolist(), b["labels"].tolist()))
        held.append(remote.dataset.ranges.held)
    ref = [(b["pack_index"].tolist(), b["input_ids"].tolist(), b["labels"].tolist()) for b in PackedLoader(local, 2, **kw)]
    assert got == ref
    st = remote.dataset.ranges.stats()
    assert st["builder_waits"] > 0
    assert st["read_ahead_window"] == 8, st  # 1 -> 2 -> 4 -> 8, the cap
    assert max(held) <= limit


def test_the_range_reader_keeps_more_connections_unless_the_user_configured_them(run, monkeypatch, tmp_path):
    """A round of range requests goes out together: botocore's 10 connections would cap a store with a long
    round trip at 10 requests per round trip, so the reader asks for S3_RANGE_CONNECTIONS; a pool size the
    user set in the fsspec configuration is kept, with the rest of their config_kwargs."""
    import fsspec

    from packer.core.rangestore import RemoteRun
    from packer.core.storage import S3_RANGE_CONNECTIONS

    _, url = run
    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    assert S3_RANGE_CONNECTIONS > 10
    assert RemoteRun(url, cache_limit=None).fs.config_kwargs["max_pool_connections"] == S3_RANGE_CONNECTIONS
    mine = {"connect_timeout": 7}
    monkeypatch.setitem(fsspec.config.conf, "s3", {"config_kwargs": mine})
    assert RemoteRun(url, cache_limit=None).fs.config_kwargs == {**mine, "max_pool_connections": S3_RANGE_CONNECTIONS}
    monkeypatch.setitem(fsspec.config.conf, "s3", {"config_kwargs": {**mine, "max_pool_connections": 3}})
    assert RemoteRun(url, cache_limit=None).fs.config_kwargs["max_pool_connections"] == 3
    # s3fs answers to s3a:// too, and fsspec merges both keys' settings: one set under "s3a" is the user's as well
    monkeypatch.setitem(fsspec.config.conf, "s3", {"config_kwargs": mine})
    monkeypatch.setitem(fsspec.config.conf, "s3a", {"config_kwargs": {"max_pool_connections": 5}})
    assert RemoteRun(url, cache_limit=None).fs.config_kwargs["max_pool_connections"] == 5


def test_the_read_ahead_window_stays_where_the_stores_rate_is_the_limit(run, monkeypatch, tmp_path):
    """A store that serves one request at a time (each range costs the same time, however many go together):
    a wider window would not fetch faster, only gather the builder's waits into longer stalls, so once the
    probe has shown rounds of several batches no faster per pack the window stays, though the builder keeps
    waiting; the batches are the local run's."""

    from packer.core.rangestore import RemoteRun
    from packer.train.loader import PackedLoader

    local, url = run
    monkeypatch.setenv("PACKER_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(RemoteRun, "_cat", _store_that_takes(lambda ranges: 0.01 * ranges, local, serial=True))
    kw = dict(rank=0, world_size=2, seed=3, read_ahead=1, cache_limit=None)
    remote = PackedLoader(url, 2, **kw)
    assert _batches(remote) == _batches(PackedLoader(local, 2, **kw))
    st = remote.dataset.ranges.stats()
    # windows of 1 and 2 make no round of several batches (the batch the builder needs goes alone), so the
    # probe doubles twice; then rounds of both kinds show the store's rate, and it stays
    assert st["builder_waits"] > 10 and st["read_ahead_window"] <= 4, st
