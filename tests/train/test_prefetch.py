"""The background builder: order, errors at the right item, bounded look-ahead, clean stop, and a
consumer side that runs no Python code and frees nothing."""

from __future__ import annotations

import gc
import sys
import threading
import time

import pytest

from packer.train.prefetch import prefetch


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "packer-prefetch"]


def _gone(seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while _threads() and time.monotonic() < end:
        time.sleep(0.005)
    return not _threads()


def test_items_in_order_and_errors_raised_at_their_item():
    it, _ = prefetch(lambda i: i * i, range(50), 3)
    assert list(it) == [i * i for i in range(50)]

    def make(i):
        if i == 3:
            raise KeyError("pack 3")
        return i

    it, _ = prefetch(make, range(10), 2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(KeyError, match="pack 3"):
        next(it)
    with pytest.raises(ValueError, match="depth"):
        prefetch(make, range(3), 0)
    assert _gone()


def test_ends_once_and_reports_the_end():
    ended = []
    it, progress = prefetch(lambda i: i, range(5), 2, on_end=lambda: ended.append(True))
    assert list(it) == [0, 1, 2, 3, 4] and ended == [True]
    assert progress.taken() == 5 and list(it) == [] and ended == [True]
    it, _ = prefetch(lambda i: i, range(0), 2, on_end=lambda: ended.append(True))
    assert list(it) == [] and ended == [True, True]


def _until(done, seconds: float = 30) -> bool:
    """Wait for done() with a deadline (a loaded machine is slow, never wrong): True once it holds."""
    end = time.monotonic() + seconds
    while not done():
        if time.monotonic() > end:
            return False
        time.sleep(0.002)
    return True


def test_builds_at_most_depth_ahead_and_counts_what_was_taken():
    built, past_depth = [], threading.Event()

    def make(i):
        if i >= 2 + 4:
            past_depth.set()  # only ever reached once the consumer takes another item
        built.append(i)
        return i

    it, progress = prefetch(make, range(1000), 4)
    assert next(it) == 0 and next(it) == 1
    assert _until(lambda: len(built) == 2 + 4), "the two taken and `depth` ahead"
    assert not past_depth.wait(0.3), "built more than `depth` ahead"
    assert len(built) == 2 + 4
    assert progress.taken() == 2
    progress.close()
    assert not _threads()
    with pytest.raises(RuntimeError, match="closed before its end"):
        list(it)  # the ready items, then a clear error: never a silently short epoch


def test_dropping_the_iterator_stops_the_thread():
    built = []
    it, _ = prefetch(lambda i: built.append(i) or i, range(100_000), 2)
    next(it)
    del it
    gc.collect()
    assert _gone(), "the builder must notice that nobody reads its items"
    assert len(built) < 10


class _Item:
    freed_on: list[str] = []

    def __del__(self):
        _Item.freed_on.append(threading.current_thread().name)


def test_spent_items_are_freed_by_the_builder_not_the_consumer():
    _Item.freed_on = []
    it, _ = prefetch(lambda i: _Item(), range(40), 2)
    for item in it:  # rebinding `item` drops the consumer's last reference to the one before
        time.sleep(0.003)
    del item
    assert _gone()
    gc.collect()
    assert len(_Item.freed_on) == 40
    on_builder = _Item.freed_on.count("packer-prefetch")
    assert on_builder >= 35, f"only {on_builder} of 40 items were freed by the builder thread"


def test_next_runs_no_python_code_while_items_are_ready():
    built = []
    it, _ = prefetch(lambda i: built.append(i) or {"i": i}, range(100), 4)
    assert next(it) == {"i": 0}
    assert _until(lambda: len(built) == 1 + 4)  # the builder is 4 ahead
    calls = []

    def profiler(frame, event, arg):
        if event == "call" and threading.current_thread() is threading.main_thread():
            calls.append(frame.f_code.co_name)

    sys.setprofile(profiler)
    try:
        a, b, c = next(it), next(it), next(it)
    finally:
        sys.setprofile(None)
    assert [a, b, c] == [{"i": 1}, {"i": 2}, {"i": 3}]
    assert calls == [], f"next() ran Python code: {calls}"
    assert list(it)[-1] == {"i": 99}


def test_close_does_not_wait_for_the_builder_to_fill_up():
    built, closing = [], threading.Event()

    def slow(i):
        if i:  # every item after the first waits for close(): the builder is caught with an item in hand
            closing.wait(30)
        built.append(i)
        return i

    it, progress = prefetch(slow, range(100), 8)
    assert next(it) == 0
    closer = threading.Thread(target=progress.close)  # close() asks the builder to stop, then waits for it
    closer.start()
    assert _until(lambda: progress.stop)
    closing.set()  # the item in hand completes
    closer.join(30)
    assert not closer.is_alive() and not _threads()
    assert built == [0, 1], "the builder finished the item in hand and stopped: it did not build up to 8 ahead"
