"""Input sources: one module per kind of file; the driver cuts chunks, the workers read them.

    scan(files, chunk_records, columns, map_fn) -> list[Chunk]     (driver; counting runs in map_fn)
    read(chunk, columns) -> Iterator[Record]                       (worker)

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
from pathlib import Path
from typing import Any

from packer.build.sources import jsonl, table
from packer.build.sources.base import Chunk, Columns, Record
from packer.core.storage import is_table_folder, is_url, local_path, size_of

READERS = {"jsonl": jsonl, "table": table}


def kind_of(path: str) -> str:
    """The reader of a file, by its suffix (a save_to_disk folder is a table)."""
    name = str(path).lower()
    if name.endswith((".parquet", ".arrow", ".feather", ".ipc")):
        return "table"
    if not is_url(path) and Path(local_path(path)).is_dir() and is_table_folder(Path(local_path(path))):
        return "table"
    return "jsonl"


MapFn = Callable[[Callable[[Any], Any], list], Iterable]


def scan(files: Sequence[str], chunk_records: int, columns: Sequence[Columns], map_fn: MapFn | None = None,
         sizes: Sequence[int] | None = None) -> list[Chunk]:
    """Every file's chunks, in order, numbered; columns[i] is what file i's records must hold.

    map_fn(fn, items) runs the JSON Lines counting step (an executor's map; None: in this process);
    sizes[i] is file i's size in bytes when already known (else it is asked of the storage)."""
    counted_files = [i for i, f in enumerate(files) if kind_of(f) == "jsonl"]
    rngs = {i: jsonl.ranges(files[i], sizes[i] if sizes is not None else size_of(files[i])) for i in counted_files}
    tasks = [(r, chunk_records) for i in counted_files for r in rngs[i]]
    results = iter(list((map_fn or _serial)(jsonl.count, tasks)) if tasks else [])
    counted = {i: [next(results) for _ in rngs[i]] for i in counted_files}
    out: list[Chunk] = []
    record = 0
    for file_index, path in enumerate(files):
        if file_index in counted:
            found = jsonl.chunks(file_index, rngs[file_index], counted[file_index], record)
        else:
            found = list(table.scan(path, file_index, record, chunk_records, columns[file_index]))
        for chunk in found:
            out.append(replace(chunk, index=len(out)))
            record = chunk.first_record + chunk.records
    return out


def _serial(fn: Callable[[Any], Any], items: list) -> Iterable:
    return map(fn, items)


def read(chunk: Chunk, columns: Columns) -> Iterator[Record]:
    """The records of a chunk (worker side)."""
    return READERS[kind_of(chunk.path)].read(chunk, columns)


__all__ = ["Chunk", "Columns", "Record", "READERS", "kind_of", "scan", "read"]
