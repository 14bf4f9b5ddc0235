"""The map stages on a real two-node Ray cluster on this machine (ray.cluster_utils.Cluster, 1 CPU
each): tasks run on both nodes and the shards are byte-identical to the local executor's."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from packer.core import config as C
from packer.core.errors import ConfigError
from packer.core.executors import resolve
from packer.pipeline import pack

from conftest import sft_records, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def files(run):
    return sorted(json.loads((run / "shards" / "manifest.json").read_text())["files"].items())


def test_two_nodes_same_shards_as_local(cluster, tmp_path):
    from packer.core.executors.ray import RayExecutor

    records = sft_records(1200, seed=9, long_every=50)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet", row_group_size=100)  # 12 chunks
    write_jsonl(tmp_path / "d.jsonl", records)
    tcfg, pcfg = C.TokenizeConfig(chunk_records=100), C.PlanConfig(pack_len=512)
    wcfg = C.WriteConfig(shard_bytes=64 * 1024)  # several shards, so the write stage maps too
    pack([str(tmp_path / "d.jsonl")], tmp_path / "local", tokenize_config=tcfg, plan_config=pcfg, write_config=wcfg)
    ray_exec = RayExecutor(address=cluster.address)
    pack([str(tmp_path / "d.parquet")], tmp_path / "ray", tokenize_config=tcfg, plan_config=pcfg, write_config=wcfg,
         executor=ray_exec)
    assert files(tmp_path / "ray") == files(tmp_path / "local")
    # Both nodes ran tasks (how many each is Ray's to decide: a node still starting its worker hands tasks on)
    assert len(ray_exec.nodes) == 2, f"the write stage's tasks ran on both nodes: {dict(ray_exec.nodes)}"
    pack([str(tmp_path / "d.jsonl")], tmp_path / "ray-jsonl", tokenize_config=tcfg, plan_config=pcfg,
         write_config=wcfg, executor="ray")
    assert files(tmp_path / "ray-jsonl") == files(tmp_path / "local")


def test_executor_names():
    assert type(resolve("local", 2)).__name__ == "LocalExecutor"
    with pytest.raises(ConfigError, match="unknown executor 'spark'; choose one of local, ray"):
        resolve("spark")
    with pytest.raises(ConfigError, match="workers= is for the local executor"):
        resolve("ray", 2)


def _die_once(marker: str, fn, item):
    """The first task to get here does its work (writes its file), then its worker process dies."""
    import os

    result = fn(item)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return result
    os.close(fd)
    os._exit(1)


def test_a_killed_worker_is_retried_and_the_shards_are_the_same(cluster, tmp_path):
    import functools
    import sys

    import ray

    from packer.core.executors.ray import RayExecutor

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test

    class KillingExecutor(RayExecutor):
        def map(self, fn, items, initializer=None, initargs=()):
            return super().map(functools.partial(_die_once, str(tmp_path / f"killed-{fn.__name__}"), fn), items,
                               initializer, initargs)

    records = sft_records(600, seed=2)
    write_jsonl(tmp_path / "d.jsonl", records)
    tcfg, pcfg, wcfg = C.TokenizeConfig(chunk_records=100), C.PlanConfig(pack_len=512), C.WriteConfig(shard_bytes=64 << 10)
    pack([str(tmp_path / "d.jsonl")], tmp_path / "local", tokenize_config=tcfg, plan_config=pcfg, write_config=wcfg)
    pack([str(tmp_path / "d.jsonl")], tmp_path / "killed", tokenize_config=tcfg, plan_config=pcfg, write_config=wcfg,
         executor=KillingExecutor(address=cluster.address))
    assert (tmp_path / "killed-tokenize_chunk").exists() and (tmp_path / "killed-write_one").exists(), \
        "a worker died in each map stage"
    assert files(tmp_path / "killed") == files(tmp_path / "local")
    assert not [p for p in (tmp_path / "killed").rglob("*") if p.name.startswith(".")], "nothing half-written left"


def _double(x: int) -> int:
    return 2 * x


def test_a_node_busy_with_other_work_does_not_stall_a_stage(cluster):
    """Another workload holds one node's only CPU: the tasks dealt to that node run on the free one instead of
    waiting for it (a plain soft node affinity waits on a busy node however long it stays busy)."""
    import sys
    import threading

    import ray

    from packer.core.executors.ray import RayExecutor

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    @ray.remote(num_cpus=1)
    class Holder:
        def ping(self) -> int:
            return 1

    holder = Holder.remote()
    ray.get(holder.ping.remote())
    try:
        out: list = []
        th = threading.Thread(target=lambda: out.extend(RayExecutor(address=cluster.address).map(_double, range(6))),
                              daemon=True)
        th.start()
        th.join(90)
        assert not th.is_alive(), "the stage waited on the busy node"
        assert out == [0, 2, 4, 6, 8, 10]
    finally:
        ray.kill(holder)
