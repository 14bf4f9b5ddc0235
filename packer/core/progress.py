"""Progress bars for stages that take more than a moment; off in library use, on in the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
ENABLED = False


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """tqdm over `items` when enabled (the CLI without --quiet), else the items unchanged."""
    if not ENABLED:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)
