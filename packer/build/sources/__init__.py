"""Input sources: one module per kind of file; the driver cuts chunks, the workers read them.

    scan(files, chunk_records, columns, map_fn) -> list[Chunk]     (driver; counting runs in map_fn)
    read(chunk, columns) -> Iterator[Record]                       (worker)

Every source module has the same three functions (SOURCES is the registry)::

    claims(path) -> bool                                            does this source read the path
    scan([(file_index, path)], chunk_records, columns, map_fn, size) -> {file_index: [Chunk]}
    read(chunk, columns) -> Iterator[Record]

Chunks come from what is cheap to learn: a table's metadata (Parquet row groups, Arrow record
batches; the schema is checked before any work) or, for JSON Lines, the counts that workers take of
byte ranges. `read` yields a chunk's records as dicts, or the InputError that says why a record is
unusable. Records are numbered 0-based over all inputs in the order given (by file, then row group or
line, then row), so numbering never depends on the executor.

    jsonl   .jsonl .jsonl.gz .jsonl.zst .json (and anything else): one JSON object per line
    table   .parquet (by row group), .arrow / .feather (IPC file or stream), `datasets` save_to_disk folders
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from packer.build.sources import jsonl, table
from packer.build.sources.base import Chunk, Columns, Record
from packer.core.storage import size_of

# The family: a path is read by the first source that claims it (jsonl claims every path, so it comes
# last). A new input format is one module with claims, scan and read, and one line here.
SOURCES = {"table": table, "jsonl": jsonl}

MapFn = Callable[[Callable[[Any], Any], list], Iterable]


def kind_of(path: str) -> str:
    """The name of the source that reads `path`."""
    return next(name for name, source in SOURCES.items() if source.claims(path))


def scan(files: Sequence[str], chunk_records: int, columns: Sequence[Columns], map_fn: MapFn | None = None,
         sizes: Sequence[int] | None = None) -> list[Chunk]:
    """Every file's chunks, in order, numbered; columns[i] is what file i's records must hold.

    map_fn(fn, items) runs a source's counting step (an executor's map; None: in this process);
    sizes[i] is file i's size in bytes when already known (else it is asked of the storage)."""
    kinds = [kind_of(f) for f in files]
    found: dict[int, list[Chunk]] = {}
    for name, source in SOURCES.items():
        mine = [(i, f) for i, f in enumerate(files) if kinds[i] == name]
        if mine:
            found.update(source.scan(mine, chunk_records, columns, map_fn or _serial,
                                     lambda i: sizes[i] if sizes is not None else size_of(files[i])))
    out: list[Chunk] = []
    record = 0
    for file_index in range(len(files)):
        for chunk in found[file_index]:
            out.append(replace(chunk, index=len(out), first_record=record))
            record += chunk.records
    return out


def _serial(fn: Callable[[Any], Any], items: list) -> Iterable:
    return map(fn, items)


def read(chunk: Chunk, columns: Columns) -> Iterator[Record]:
    """The records of a chunk (worker side)."""
    return SOURCES[kind_of(chunk.path)].read(chunk, columns)


__all__ = ["Chunk", "Columns", "Record", "SOURCES", "kind_of", "scan", "read"]
