"""Columnar input: Parquet files (one chunk per row group), Arrow IPC files or streams (runs of record
batches), and `datasets` save_to_disk folders (their data-*.arrow streams, in state.json's order).

Only the columns the run needs are read (the chat's messages and tools, or the sft/text fields), and
the schema is checked before any work: a missing column names the file and the columns it has. A
record's location is "FILE: row group G, row R" (Parquet) or "FILE: row R" (Arrow), and the row of
the file (0-based) is its stored lineage. Local files are memory-mapped; URLs are read in ranges, so
a worker fetches only its row group's column chunks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import pyarrow as pa

from packer.core.errors import InputError
from packer.build.sources.base import Chunk, Columns, Record
from packer.core.storage import is_table_folder, is_url, local_path, open_input

HINT = "name the column with --query-field, --response-field, --messages-field or --text-field (or PATH#query=COLUMN)"
READ_ROWS = 1024  # rows turned into Python dicts at a time: a row group's dicts never all exist at once


def _parquet(path: str):
    import pyarrow.parquet as pq

    # Read, not mapped: a map would keep every page it touched in this process's RSS.
    src = pa.OSFile(local_path(path), "r") if not is_url(path) else open_input(path)
    try:
        return pq.ParquetFile(src)
    except (pa.ArrowException, OSError) as e:
        raise InputError(path, None, None, f"is not a readable Parquet file ({_why(e)})",
                         "re-export the file, or check its suffix") from None


def _check(path: str, names: list[str], columns: Columns) -> None:
    missing = [c for c in columns.required if c not in names]
    if columns.any_of and not any(c in names for c in columns.any_of):
        missing.append(" or ".join(columns.any_of))
    if missing:
        raise InputError(path, None, missing[0], f"missing (columns: {', '.join(names) or 'none'})", HINT)


def _arrow_parts(path: str) -> list[str]:
    """The IPC files of an input: itself, or a save_to_disk folder's data files in its state.json order."""
    p = Path(local_path(path))
    if not is_url(path) and p.is_dir():
        if (p / "dataset_dict.json").is_file():
            splits = json.loads((p / "dataset_dict.json").read_text()).get("splits", [])
            raise InputError(path, None, None, f"is a DatasetDict with splits {', '.join(splits)}",
                             f"pass one split's folder, e.g. {p / (splits[0] if splits else 'train')}")
        try:
            files = [d["filename"] for d in json.loads((p / "state.json").read_text())["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(str(p / "state.json"), None, None, f"unreadable ({_why(e)})",
                             "save the dataset again with save_to_disk") from None
        return [str(p / f) for f in files]
    return [path]


def _ipc_reader(part: str):
    """An Arrow IPC reader over a file or a stream (datasets writes streams), and whether it is a file."""
    src = pa.memory_map(local_path(part), "r") if not is_url(part) else open_input(part)
    try:
        return pa.ipc.open_file(src), True
    except pa.ArrowInvalid:
        src.seek(0)
        try:
            return pa.ipc.open_stream(src), False
        except (pa.ArrowException, OSError) as e:
            raise InputError(part, None, None, f"is not a readable Arrow IPC file or stream ({_why(e)})",
                             "re-export the file, or check its suffix") from None


def _ipc_batches(part: str) -> Iterator[pa.RecordBatch]:
    """The record batches of an Arrow file or stream; a truncated or damaged one is an InputError naming it
    (never a short read: a stream cut between batches ends early without an end-of-stream marker)."""
    reader, is_file = _ipc_reader(part)
    try:
        if is_file:
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
        else:
            yield from reader
    except (pa.ArrowException, OSError) as e:
        raise InputError(part, None, None, f"is truncated or damaged ({_why(e)})",
                         "re-export the file (or copy it again)") from None


SUFFIXES = (".parquet", ".arrow", ".feather", ".ipc")


def claims(path: str) -> bool:
    """Parquet and Arrow files by suffix, and local `datasets` save_to_disk folders."""
    if str(path).lower().endswith(SUFFIXES):
        return True
    return not is_url(path) and Path(local_path(path)).is_dir() and is_table_folder(Path(local_path(path)))


def scan(files: Sequence[tuple[int, str]], chunk_records: int, columns: Sequence[Columns], map_fn: Callable,
         size: Callable[[int], int]) -> dict[int, list[Chunk]]:
    """Driver side: each file's chunks from its metadata alone (records numbered from 0 within the file);
    nothing to count, so map_fn and size are not used."""
    return {i: list(scan_file(path, i, 0, chunk_records, columns[i])) for i, path in files}


def scan_file(path: str, file_index: int, first_record: int, chunk_records: int, columns: Columns) -> Iterator[Chunk]:
    """Chunks of one table input, from its metadata: Parquet row groups, or runs of Arrow record batches
    of about chunk_records rows. Raises InputError for a missing column before any chunk is yielded."""
    record = first_record
    if str(path).lower().endswith(".parquet"):
        meta = _parquet(path)
        _check(path, meta.schema_arrow.names, columns)
        row = 0
        for g in range(meta.metadata.num_row_groups):
            n = meta.metadata.row_group(g).num_rows
            if n:
                yield Chunk(file_index, path, record, n, payload=("parquet", g, row))
            record, row = record + n, row + n
        return
    for part in _arrow_parts(path):
        reader, _ = _ipc_reader(part)
        _check(part, reader.schema.names, columns)
        start, rows, row = 0, 0, 0
        # Per-batch loop over metadata only (the batches are zero-copy views of the map).
        for i, batch in enumerate(_ipc_batches(part)):
            rows += batch.num_rows
            if rows >= chunk_records:
                yield Chunk(file_index, path, record, rows, payload=("arrow", part, start, i + 1 - start, row))
                record, row, start, rows = record + rows, row + rows, i + 1, 0
        if rows:
            yield Chunk(file_index, path, record, rows, payload=("arrow", part, start, None, row))
            record += rows


def blocks(chunk: Chunk, columns: Columns, size: int) -> Iterator[tuple[int, pa.Table]]:
    """Worker side: the chunk's needed columns in blocks of `size` rows (the last may be shorter), each with
    its first row's index within the chunk. Memory: one block (a row group is read `size` rows at a time)."""
    if chunk.payload[0] == "parquet":
        _, g, _ = chunk.payload
        pf = _parquet(chunk.path)
        batches = pf.iter_batches(batch_size=size, row_groups=[g], columns=columns.select(pf.schema_arrow.names),
                                  use_threads=False)
    else:
        _, part, start, count, _ = chunk.payload
        reader, _ = _ipc_reader(part)
        cols = columns.select(reader.schema.names)
        batches = (b.select(cols) for b in islice(_ipc_batches(part), start, None if count is None else start + count))
    held: list[pa.RecordBatch] = []
    rows = done = 0
    for batch in batches:  # per-batch loop: cut into blocks of exactly `size` rows, whatever the stored batches
        held.append(batch)
        rows += batch.num_rows
        while rows >= size:
            table = pa.Table.from_batches(held)
            yield done, table.slice(0, size)
            held, rows, done = table.slice(size).to_batches(), rows - size, done + size
    if rows:
        yield done, pa.Table.from_batches(held)


def places(chunk: Chunk, in_chunk: int, n: int) -> tuple[list[int], Callable[[int], str]]:
    """Rows in_chunk .. in_chunk + n - 1 of a chunk: their stored positions (the file's 0-based rows), and
    where(i), the i-th one's place in errors: "FILE: row group G, row R" (Parquet) or "FILE: row R" (Arrow)."""
    if chunk.payload[0] == "parquet":
        _, g, row = chunk.payload
        prefix, local = f"{chunk.path}: row group {g}, row ", in_chunk
    else:
        _, part, _, _, row = chunk.payload
        prefix, local = f"{part}: row ", row + in_chunk
    return list(range(row + in_chunk, row + in_chunk + n)), lambda i: f"{prefix}{local + i}"


def records(chunk: Chunk, block: pa.Table, in_chunk: int) -> Iterator[Record]:
    """The rows of one block (from `blocks`, starting at row `in_chunk` of the chunk) as records: dicts of
    the needed columns, each with its place (`places`)."""
    positions, where = places(chunk, in_chunk, block.num_rows)
    for i, obj in enumerate(block.to_pylist()):  # per-record: rendering is per record by nature
        yield Record(where(i), None, positions[i], obj)


def read(chunk: Chunk, columns: Columns) -> Iterator[Record]:
    """Worker side: the chunk's rows as dicts of the needed columns, READ_ROWS at a time."""
    for in_chunk, block in blocks(chunk, columns, READ_ROWS):
        yield from records(chunk, block, in_chunk)


def strings(block: pa.Table, fields: Sequence[str]) -> list[list[str]] | None:
    """The block's `fields` as Python strings, column by column (no dict per row), or None where any is not a
    plain string column without nulls: then the per-record path says what is wrong with which row."""
    out = []
    for name in fields:
        if name not in block.column_names:
            return None
        column = block.column(name)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) or column.null_count:
            return None
        out.append(column.to_pylist())
    return out


def _why(e: BaseException) -> str:
    return (str(e).splitlines()[0] if str(e) else type(e).__name__)[:160]
