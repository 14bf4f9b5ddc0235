"""Input sources: one module per kind of file, each with the same two functions.

    scan(path, file_index, first_record, chunk_records, columns) -> Iterator[Chunk]   (driver)
    read(chunk, columns) -> Iterator[Record]                                           (worker)

`scan` cuts a file into chunks from what is cheap to learn (lines, row groups, record batches) and
checks the schema before any work; `read` yields the chunk's records as dicts, or the InputError
that says why a record is unusable. Records are numbered 0-based over all inputs in the order given
(by file, then row group, then row), so numbering never depends on the executor.

    jsonl   .jsonl .jsonl.gz .jsonl.zst .json (and anything else): one JSON object per line
    table   .parquet (by row group), .arrow / .feather (IPC file or stream), `datasets` save_to_disk folders
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from packer.sources import jsonl, table
from packer.sources.base import Chunk, Columns, Record
from packer.storage import is_table_folder, is_url, local_path

READERS = {"jsonl": jsonl, "table": table}


def kind_of(path: str) -> str:
    """The reader of a file, by its suffix (a save_to_disk folder is a table)."""
    name = str(path).lower()
    if name.endswith((".parquet", ".arrow", ".feather", ".ipc")):
        return "table"
    if not is_url(path) and Path(local_path(path)).is_dir() and is_table_folder(Path(local_path(path))):
        return "table"
    return "jsonl"


def scan(files: Sequence[str], chunk_records: int, columns: Sequence[Columns]) -> Iterator[Chunk]:
    """Every file's chunks, in order, numbered; columns[i] is what file i's records must hold."""
    record, index = 0, 0
    for file_index, path in enumerate(files):
        for chunk in READERS[kind_of(path)].scan(path, file_index, record, chunk_records, columns[file_index]):
            yield replace(chunk, index=index)
            index += 1
            record = chunk.first_record + chunk.records


def read(chunk: Chunk, columns: Columns) -> Iterator[Record]:
    """The records of a chunk (worker side)."""
    return READERS[kind_of(chunk.path)].read(chunk, columns)


__all__ = ["Chunk", "Columns", "Record", "READERS", "kind_of", "scan", "read"]
