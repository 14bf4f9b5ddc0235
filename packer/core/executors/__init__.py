"""Executors: what runs a stage's map steps. Stages take one as `executor=` (or `workers=N`, short for
the local one), so the same stage code runs in this process, on local processes or on a cluster.

The protocol is one method; an executor must yield the results in item order, so a stage's output
never depends on which executor ran it or how many workers it had::

    executor.map(fn, items, initializer=None, initargs=()) -> Iterator[fn(item) for item in items]

`initializer(*initargs)` runs once in each process that calls fn (the stage's per-process setup).
Executors import no stage; stages import only this protocol and `resolve`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from packer.core.config import whole
from packer.core.errors import ConfigError
from packer.core.executors.local import LocalExecutor

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    def map(self, fn: Callable[[T], R], items: Iterable[T], initializer: Callable[..., Any] | None = None,
            initargs: tuple = ()) -> Iterator[R]:
        """fn over items, results in item order."""
        ...


MAX_WORKERS = 1024
"""Worker processes of the local executor: each holds a tokenizer and a chunk in memory."""


def _local(workers: int) -> Executor:
    return LocalExecutor(whole("workers (--workers)", workers, 0, MAX_WORKERS, "each worker process holds a "
                                                                                  "tokenizer and a chunk in memory"))


def _ray(workers: int) -> Executor:
    if workers:
        raise ConfigError("workers= is for the local executor; Ray uses the cluster's CPUs (drop --workers)")
    from packer.core.executors.ray import RayExecutor  # imported on use: ray is an optional extra

    return RayExecutor()


# The family, by the name --executor takes: a factory of `workers`. A new executor is one module and one line.
EXECUTORS: dict[str, Callable[[int], Executor]] = {"local": _local, "ray": _ray}
NAMES = tuple(EXECUTORS)


def resolve(executor: Executor | str | None, workers: int = 0) -> Executor:
    """The executor a stage runs on: the one given (or named: "local", "ray"), else the local one with
    `workers` processes."""
    if isinstance(executor, str):
        if executor not in EXECUTORS:
            raise ConfigError(f"unknown executor '{executor}'; choose one of {', '.join(NAMES)}")
        return EXECUTORS[executor](workers)
    if executor is not None and workers:
        raise ConfigError("pass executor= or workers=, not both (workers=N is short for LocalExecutor(N))")
    if executor is None:
        return _local(workers)
    if not callable(getattr(executor, "map", None)):
        raise ConfigError(f"{type(executor).__name__} is not an executor: it has no map(fn, items, initializer, "
                          "initargs) method")
    return executor


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "MAX_WORKERS", "NAMES", "resolve"]
