"""The Ray executor: a stage's map steps as Ray tasks across a cluster (`pip install 'packer[ray]'`).

Trade-off: every core of every node, at the cost of a Ray cluster and of sending each item (a chunk
descriptor: a Parquet row group, an Arrow run or a JSON Lines byte range, read where it lands) to the
task. Results (small: counts and lengths) come back in item order, so the driver's
plan stays global and the shards are byte-identical to the local executor's. The stage's
initializer (tokenizer, job) runs once per worker process and map call, not once per task. A task
whose worker dies is retried (`max_retries`); a task rewrites only its own output file, so a retry
gives the same bytes.

The cluster is RAY_ADDRESS (or `address=`) when given, else a local one started on first use.
Outputs are written where the stage says: on a multi-node cluster that folder must be on storage
every node sees.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from packer.core.errors import ConfigError
from packer.core.executors.local import trim_heap

T = TypeVar("T")
R = TypeVar("R")

_READY: set[str] = set()  # in a worker process: the map calls whose initializer has run here


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("executor 'ray' needs Ray: pip install 'packer[ray]'") from None
    return ray


def _task(call: str, setup: tuple, fn: Callable[[T], R], item: T) -> tuple[str, R]:
    """Runs on a worker: the map call's initializer once per process, then fn(item)."""
    if call not in _READY:
        initializer, initargs = setup
        if initializer is not None:
            initializer(*initargs)
        _READY.add(call)
    try:
        node = _ray().get_runtime_context().get_node_id()
        return node, fn(item)
    finally:
        trim_heap()


def _affinity(node: str):
    """Prefer `node`, run elsewhere when it is busy or gone. Spilling a busy node's task is a flag Ray marks
    private (`_spill_on_unavailable`); where a Ray version lacks it, SPREAD (best-effort) is used instead, since
    a plain soft affinity waits on a busy node however free the others are."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        return NodeAffinitySchedulingStrategy(node, soft=True, _spill_on_unavailable=True)
    except TypeError:
        return "SPREAD"


class RayExecutor:
    """Map steps as Ray tasks. `nodes` counts, per Ray node id, the tasks of the last map call."""

    def __init__(self, address: str | None = None, *, num_cpus: float = 1, max_in_flight: int | None = None,
                 max_retries: int = 3):
        if num_cpus <= 0 or max_retries < 0 or (max_in_flight is not None and max_in_flight < 1):
            raise ConfigError("RayExecutor: num_cpus > 0, max_retries >= 0 and max_in_flight >= 1")
        self.address, self.num_cpus, self.max_retries = address, num_cpus, max_retries
        self.max_in_flight = max_in_flight
        self.nodes: Counter[str] = Counter()

    def _connect(self):
        ray = _ray()
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or None
            ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                     runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "HF_"))}})
        return ray

    def _slots(self, ray) -> list[str]:
        """One entry per task the cluster runs at once: each alive node's id as many times as it has room
        for tasks, interleaved (a, b, a, b, a, ...) so dealing them in turn keeps every node busy in proportion
        to its CPUs. Fixed order (by id), so a re-run deals the same way."""
        room = {n["NodeID"]: int(n.get("Resources", {}).get("CPU", 0) // self.num_cpus)
                for n in ray.nodes() if n.get("Alive")}
        nodes = sorted(node for node, k in room.items() if k > 0)
        return [node for turn in range(max(room.values(), default=0)) for node in nodes if room[node] > turn]

    def map(self, fn: Callable[[T], R], items: Iterable[T], initializer: Callable[..., Any] | None = None,
            initargs: tuple = ()) -> Iterator[R]:
        """Yield fn(item) for each item, in order, with at most max_in_flight tasks submitted (default:
        2 x the tasks the cluster runs at once), so the driver never holds more than that many items or results."""
        ray = self._connect()
        call = uuid.uuid4().hex
        setup = ray.put((initializer, initargs))
        remote = ray.remote(num_cpus=self.num_cpus, max_retries=self.max_retries)(_task)
        # Tasks are dealt round the nodes' task slots. Ray's default fills the driver's node first and its SPREAD
        # is best-effort; both can leave a node idle for a whole stage of short tasks. The affinity is soft and
        # spills when the node is busy (its CPUs held by other work) or gone, so no task waits on one node
        # while another is free.
        strategies = [_affinity(node) for node in self._slots(ray)] or ["SPREAD"]
        window = self.max_in_flight or max(2, 2 * len(strategies))
        self.nodes = Counter()
        pending: deque = deque()

        def take():
            node, result = ray.get(pending.popleft())
            self.nodes[node] += 1
            return result

        for i, item in enumerate(items):
            task = remote.options(scheduling_strategy=strategies[i % len(strategies)])
            pending.append(task.remote(call, setup, fn, item))
            if len(pending) >= window:
                yield take()
        while pending:
            yield take()
