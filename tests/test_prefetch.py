"""The background builder: order, errors at the right item, bounded look-ahead, clean stop."""

from __future__ import annotations

import threading
import time

import pytest

from packer.prefetch import prefetch


def test_items_in_order_and_errors_raised_at_their_item():
    assert list(prefetch(lambda i: i * i, range(50), 3)) == [i * i for i in range(50)]

    def make(i):
        if i == 3:
            raise KeyError("pack 3")
        return i

    it = prefetch(make, range(10), 2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(KeyError, match="pack 3"):
        next(it)
    with pytest.raises(ValueError, match="depth"):
        next(prefetch(make, range(3), 0))


def test_builds_at_most_depth_ahead_and_stops_when_closed():
    built = []
    it = prefetch(lambda i: built.append(i) or i, range(1000), 4)
    assert next(it) == 0
    time.sleep(0.2)
    assert len(built) <= 1 + 4 + 1  # the one taken, the queue, and one waiting to be put
    it.close()
    assert not [t for t in threading.enumerate() if t.name == "packer-prefetch"]
    assert len(built) < 10
