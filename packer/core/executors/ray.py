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

    def map(self, fn: Callable[[T], R], items: Iterable[T], initializer: Callable[..., Any] | None = None,
            initargs: tuple = ()) -> Iterator[R]:
        """Yield fn(item) for each item, in order, with at most max_in_flight tasks submitted (default:
        2 x the cluster's CPUs), so the driver never holds more than that many items or results."""
        ray = self._connect()
        call = uuid.uuid4().hex
        setup = ray.put((initializer, initargs))
        # SPREAD: tasks go round the nodes instead of filling the driver's node first (the default packs short
        # tasks onto one node while the others idle), so every node reads and writes its share.
        remote = ray.remote(num_cpus=self.num_cpus, max_retries=self.max_retries, scheduling_strategy="SPREAD")(_task)
        window = self.max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        self.nodes = Counter()
        pending: deque = deque()

        def take():
            node, result = ray.get(pending.popleft())
            self.nodes[node] += 1
            return result

        for item in items:
            pending.append(remote.remote(call, setup, fn, item))
            if len(pending) >= window:
                yield take()
        while pending:
            yield take()
