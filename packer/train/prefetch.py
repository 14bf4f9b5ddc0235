"""Build items in a background thread, a bounded number ahead of the consumer, at the least cost to it.

Why a thread and not processes: the batch kernel (packer.train.collate) runs without the GIL, so a thread
builds the next batch while the training step runs, and handing it over is a queue take, not an
inter-process transfer (torch DataLoader workers pay ~0.7 ms for a 0.75 MiB batch on 2 cores).

What the consumer (the training thread) pays per item is what matters, so its `next()` runs no Python
code at all: it is `itertools.chain(iter(queue.get, END), tail)`, three C calls. Everything else is
the builder's job (benchmarks/bench_loader.py measures the difference):

- Knowing how far ahead it is: the builder counts what it built and reads the queue's size, so the
  consumer reports nothing. Waking a blocked thread is a system call (on a virtual machine, an
  inter-processor interrupt) of ~5 us charged to the waker, more than the rest of `next()`; so the
  builder is never woken by the consumer: while it is `depth` ahead it naps, a quarter of the
  consumer's recent pace at a time (at least NAP_MIN, at most NAP_MAX), and looks again.
- Freeing spent items: a training loop drops its last reference to a batch when it rebinds its loop
  variable, right after `next()`, and freeing a batch's tensors costs ~15 us on a cold cache. The
  builder keeps a reference to every item until the consumer has taken the one after it, and drops it
  then, so the batch is freed in the background.
- Ending: the items end with a sentinel; `tail`, a generator, then raises the error `make` raised at
  that item (if any) and joins the thread. A consumer that stops early just drops the iterator: the
  builder sees `tail` gone (a weak reference) at its next look and stops.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
NAP_MIN, NAP_MAX = 50e-6, 1e-3
"""Seconds the builder naps between looks while it is `depth` ahead: a quarter of the consumer's pace."""


class _End:
    """The sentinel after the last item: equal only to itself."""


class Progress:
    """What the builder and the consumer's iterator share (never the iterator itself)."""

    def __init__(self) -> None:
        self.ready: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()  # `built` and the queue change together
        self.built = 0
        self.error: BaseException | None = None
        self.stop = False
        self.finished = False  # every item was built
        self.ended = False  # the sentinel is in the queue
        self.thread: threading.Thread | None = None

    def taken(self) -> int:
        """Items the consumer has taken so far (exact when asked from the consumer's thread)."""
        with self.lock:
            return self.built - (self.ready.qsize() - self.ended)

    def close(self) -> None:
        """Stop the builder (it finishes the item in hand) and wait for it."""
        self.stop = True
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()


def _build(make: Callable[[int], T], indices: range, depth: int, pr: Progress, end: _End,
           consumer: weakref.ref) -> None:
    ready, held = pr.ready, deque()
    seen, seen_at, pace = 0, time.perf_counter(), NAP_MAX * 4
    try:
        for i in indices:
            while True:
                waiting = ready.qsize()
                while len(held) > waiting + 1:  # taken before the consumer's current item: spent
                    held.popleft()  # often the last reference: the item is freed here, not in the consumer
                if pr.stop or consumer() is None:
                    return
                if waiting < depth:
                    break
                taken = pr.built - waiting
                if taken > seen:
                    now = time.perf_counter()
                    pace, seen, seen_at = (now - seen_at) / (taken - seen), taken, now
                time.sleep(min(NAP_MAX, max(NAP_MIN, pace / 4)))
            item = make(i)
            with pr.lock:
                ready.put(item)
                pr.built += 1
            held.append(item)
        pr.finished = True
    except BaseException as exc:  # handed to the consumer, raised after the items before it
        pr.error = exc
    finally:
        with pr.lock:
            ready.put(end)
            pr.ended = True


def _tail(pr: Progress, on_end: Callable[[], None] | None) -> Iterator:
    """Runs once the sentinel is reached: join the builder, raise its error, report the end."""
    with pr.lock:
        pr.ended = False  # taken: no longer in the queue
    pr.close()
    if pr.error is not None:
        raise pr.error
    if not pr.finished:
        raise RuntimeError("this prefetching iterator was closed before its end; start a new one")
    if on_end is not None:
        on_end()
    yield from ()


def prefetch(make: Callable[[int], T], indices: range, depth: int,
             on_end: Callable[[], None] | None = None) -> tuple[Iterator[T], Progress]:
    """(iterator over make(i) for i in indices, in order, built by one daemon thread up to `depth` items
    ahead; its Progress).

    An exception in `make` is raised in the consumer at the item where it happened. on_end runs once the
    last item has been taken. Dropping the iterator early stops the thread (or Progress.close()); nothing
    is built past `depth` ahead. Items are compared with `==` to a private sentinel, so they must be
    objects whose `==` against a foreign object is False (dicts, numbers, tuples: not arrays).
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    pr, end = Progress(), _End()
    tail = _tail(pr, on_end)
    pr.thread = threading.Thread(target=_build, args=(make, indices, depth, pr, end, weakref.ref(tail)),
                                 name="packer-prefetch", daemon=True)
    pr.thread.start()
    return itertools.chain(iter(pr.ready.get, end), tail), pr
