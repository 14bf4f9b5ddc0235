"""The tokenized format (stage 1's output): Arrow IPC files of token ids, loss masks and lineage.

A tokenize stage folder holds `chunk-00000.arrow`, `chunk-00001.arrow`, ... and `manifest.json`
(packer.core.manifest), which lists the chunks in order with their row counts. One Arrow row per
example (Arrow IPC file, no compression, so readers memory-map it):

    example_index int64       record number among all records of all inputs (0-based)
    file_index    int32       position of the file among the input files (globs expanded)
    line          int64       where the record is in its file: the 1-based line (JSON Lines) or the
                              0-based row (Parquet, Arrow)
    length        int32       tokens in the example
    prompt_len    int32       tokens before the first trained-on token
    input_ids     list<uint32>
    loss_mask     list<uint8> 1 where the token is a training target
    role          uint8       0 plain; preference rows: 1 chosen, 2 rejected, 3 desirable, 4 undesirable,
                              5 KTO's mismatched (KL) row (packer.build.preference). A record's rows are
                              consecutive and share its example_index.

Runs with images (`--processor`, version 6) have three more columns (SCHEMA_IMAGES):

    patches       int64       vision patches of the example's images: sum of t * h * w
    image_grid    list<int32> t, h, w (in patches) of each image, in placeholder order
    image_pixels  list<large_binary>  each image's pixels as its processor resized them: uint8 [3, H, W],
                              H = h * patch_size, W = w * patch_size (packer.build.images)

The one module that builds (examples_table, write_chunk) and reads (open_tokenized, read_columns) it;
docs/FORMAT.md is its specification.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from packer.core import arrow
from packer.core.errors import FormatError
from packer.core.manifest import check_files, read_manifest, verify_once
from packer.core.roles import MAX_ROW_ROLE

FORMAT = "packer-tokenized"
VERSION = 6  # 2: manifests carry manifest_sha256; 3: sources, input identities (size, sha256 or ETag), line = row
# for tables; 4: config.max_render_chars and config.render_budget (chat rendering limits); 5: the role column and
# the preference kind's config fields; 6: config.processor, and the image columns of runs with images


SCHEMA = pa.schema([
    ("example_index", pa.int64()),
    ("file_index", pa.int32()),
    ("line", pa.int64()),
    ("length", pa.int32()),
    ("prompt_len", pa.int32()),
    ("input_ids", pa.list_(pa.uint32())),
    ("loss_mask", pa.list_(pa.uint8())),
    ("role", pa.uint8()),
])
SCHEMA_IMAGES = pa.schema(list(SCHEMA) + [
    ("patches", pa.int64()),
    ("image_grid", pa.list_(pa.int32())),
    ("image_pixels", pa.list_(pa.large_binary())),
])
MAX_ROLE = MAX_ROW_ROLE


def examples_table(example_index: np.ndarray, file_index: np.ndarray, line: np.ndarray, lengths: np.ndarray,
                   ids: np.ndarray, loss: np.ndarray, roles: np.ndarray | None = None,
                   images: Sequence[Sequence[tuple[np.ndarray, tuple[int, int, int]]]] | None = None) -> pa.Table:
    """The stage-1 table (SCHEMA, see the module docstring) of N examples: per example its record
    number int64 [N], input file int32 [N], line int64 [N] and length [N]; flat ids [T] and loss mask
    [T] (0/1), T = lengths.sum(). prompt_len is derived here. The one place that builds this format.
    images (runs with images): per example its images as (uint8 [3, H, W] pixels, grid t, h, w)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    loss = np.asarray(loss, dtype=np.uint8)
    columns = [
        arrow.array(example_index, pa.int64()),
        arrow.array(file_index, pa.int32()),
        arrow.array(line, pa.int64()),
        arrow.array(lengths, pa.int32()),
        arrow.array(_first_true(loss, offsets), pa.int32()),
        arrow.list_array(offsets, arrow.array(ids, pa.uint32())),
        arrow.list_array(offsets, arrow.array(loss, pa.uint8())),
        arrow.array(np.zeros(len(lengths), np.uint8) if roles is None else roles, pa.uint8()),
    ]
    if images is not None:
        grids = [int(x) for ims in images for _, g in ims for x in g]
        columns += [
            arrow.array([sum(int(np.prod(g)) for _, g in ims) for ims in images], pa.int64()),
            arrow.list_array(np.cumsum([0] + [sum(len(g) for _, g in ims) for ims in images]),
                             arrow.array(grids, pa.int32())),
            arrow.list_array(np.cumsum([0] + [len(ims) for ims in images]), arrow.large_binary(
                [np.ascontiguousarray(px, np.uint8).tobytes() for ims in images for px, _ in ims])),
        ]
    # Built from buffers (packer.core.arrow): pa.array and pa.table would import pandas, 50 MB of memory.
    return pa.Table.from_arrays(columns, schema=SCHEMA if images is None else SCHEMA_IMAGES)


def write_chunk(table: pa.Table, dest: str | Path | pa.NativeFile) -> None:
    """Write one chunk (Arrow IPC file format, uncompressed, so readers memory-map it) to a path or stream."""
    if isinstance(dest, pa.NativeFile):
        with pa.ipc.new_file(dest, table.schema) as writer:
            writer.write_table(table)
        return
    with pa.OSFile(str(dest), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _first_true(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per example, the index (within the example) of its first 1 in `mask`; its length when none."""
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    if n == 0:
        return np.zeros(0, np.int64)
    # An example's first one is at its own start or where a run of ones begins inside it: those positions
    # only, far fewer than the ones themselves.
    mask = np.asarray(mask, bool)
    heads = offsets[:-1][lengths > 0]
    pos = np.sort(np.concatenate([np.flatnonzero(mask[1:] > mask[:-1]) + 1, heads[mask[heads]]]))
    if not len(pos):  # no ones at all
        return lengths.astype(np.int64)
    first = np.searchsorted(pos, offsets[:-1])
    found = first < len(pos)
    cand = np.where(found, pos[np.minimum(first, len(pos) - 1)], offsets[1:])
    within = np.minimum(cand, offsets[1:]) - offsets[:-1]
    return np.where(within < lengths, within, lengths)


def chunk_name(index: int) -> str:
    return f"chunk-{index:05d}.arrow"


def open_tokenized(folder: str | Path, *, maps: list | None = None, verify: bool = True) -> tuple[dict, list[pa.Table]]:
    """The manifest and the memory-mapped Arrow tables (zero-copy) of a tokenize stage folder, each
    checked for its schema and structure (offsets inside their buffers) before use, and every file's
    sha256 once per run (verify=True, the default: packer.core.manifest.verify_once).

    maps: when given, the files are mapped with Python's mmap and the maps appended to it, so the
    caller can drop the pages it has read (mmap.madvise) and keep its memory flat.
    """
    import mmap

    manifest, hint = _listed(folder, verify)
    tables = []
    for c in manifest["chunks"]:
        path = Path(folder) / c["file"]
        try:
            if maps is None:  # the map stays open as long as the table's buffers refer to it
                source = pa.memory_map(str(path), "r")
            else:
                with open(path, "rb") as f:
                    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                # Random access: no read-ahead or fault-around (16 pages mapped per touched page).
                mm.madvise(mmap.MADV_RANDOM)
                maps.append(mm)
                source = pa.BufferReader(pa.py_buffer(mm))
        except OSError as e:
            raise FormatError(str(path), f"unreadable tokenized chunk ({str(e).splitlines()[0][:120]})", hint) from None
        tables.append(_checked_table(path, source, c, hint))
    return manifest, tables


def _listed(folder: str | Path, verify: bool) -> tuple[dict, str]:
    """A tokenize stage's sealed manifest, its 'chunks' checked to name chunk-00000.arrow, ... in order,
    and with verify, its files' sha256 checked once per run."""
    folder = Path(folder)
    hint = "run `packer tokenize` (or `packer pack`) again"
    manifest = read_manifest(folder, FORMAT, VERSION, hint)
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {c.get("file") for c in manifest.get("chunks") or []
                                                     if isinstance(c, dict)}:
        raise FormatError(str(folder / "manifest.json"), "'files' does not list exactly the chunks", hint)
    chunks = manifest.get("chunks")
    if not isinstance(chunks, list) or not all(isinstance(c, dict) and isinstance(c.get("file"), str)
                                               and c["file"] == chunk_name(i) for i, c in enumerate(chunks)):
        raise FormatError(str(folder / "manifest.json"), "'chunks' does not list chunk-00000.arrow, ... in order",
                          hint)
    if verify:
        verify_once(folder, manifest)
    return manifest, hint


def _checked_table(path: Path, source, entry: dict, hint: str, fields: Sequence[str] | None = None) -> pa.Table:
    """One chunk read from `source`, checked for the schema, Arrow's structure and the manifest's row count.
    fields: read only these columns (and role, which is checked), not the token lists."""
    try:
        reader = pa.ipc.open_file(source)
        if not (reader.schema.equals(SCHEMA) or reader.schema.equals(SCHEMA_IMAGES)):
            raise ValueError(f"schema {reader.schema.names} is not the tokenized schema")
        if fields is not None:
            keep = sorted({reader.schema.get_field_index(n) for n in (*fields, "role")} - {-1})
            reader = pa.ipc.open_file(source, options=pa.ipc.IpcReadOptions(included_fields=keep))
        table = reader.read_all()
        table.validate()
    except (pa.ArrowException, OSError, ValueError) as e:
        raise FormatError(str(path), f"unreadable tokenized chunk ({str(e).splitlines()[0][:120]})", hint) from None
    if table.num_rows != entry.get("examples"):
        raise FormatError(str(path), f"{table.num_rows} rows, manifest.json records {entry.get('examples')}", hint)
    try:
        roles = arrow.to_numpy(table.column("role"))
    except ValueError as e:  # nulls where the format has none
        raise FormatError(str(path), f"unreadable tokenized chunk (role: {e})", hint) from None
    if table.num_rows and int(np.max(roles)) > MAX_ROLE:
        raise FormatError(str(path), f"a role above {MAX_ROLE} (the roles are 0-{MAX_ROLE})", hint)
    return table


def read_columns(folder: str | Path, names: Sequence[str], *, verify: bool = True,
                 whole: bool = False) -> dict[str, np.ndarray]:
    """The per-example columns `names` (not the token lists) of a tokenize stage folder, as int64 arrays
    (every file's sha256 checked once per run with verify=True, the default).

    Each chunk is read (not mapped), checked as open_tokenized checks it, and dropped before the next:
    mapping would fault whole page-cache folios into this process for a few bytes a row (~40 MB at
    150k examples on Linux 6.18), so memory would grow with the data. Only the columns asked for (and
    role) are read, not the token lists (which are most of a chunk's bytes); whole=True reads and checks
    every column (`packer verify`).
    """
    manifest, hint = _listed(folder, verify)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for c in manifest["chunks"]:
        path = Path(folder) / c["file"]
        try:
            with pa.OSFile(str(path), "r") as f:
                table = _checked_table(path, f, c, hint, None if whole else names)
        except OSError as e:
            raise FormatError(str(path), f"unreadable tokenized chunk ({str(e).splitlines()[0][:120]})", hint) from None
        for n in names:
            try:
                parts[n].append(arrow.to_numpy(table.column(n)).astype(np.int64))
            except ValueError as e:  # nulls where the format has none
                raise FormatError(str(path), f"unreadable tokenized chunk ({n}: {e})", hint) from None
        del table
        pa.default_memory_pool().release_unused()  # one chunk's buffers at a time, not the pool's high-water
    return {n: np.concatenate(p) if p else np.zeros(0, np.int64) for n, p in parts.items()}


def verify(folder: str | Path) -> str:
    """The full check of a tokenize stage folder (`packer verify`): the seal, every file's sha256 (always
    hashed, whatever the verified-marker says) and every chunk's schema, structure and row count.
    Returns a one-line summary; FormatError names the first bad file."""
    manifest, _ = _listed(folder, verify=False)
    check_files(Path(folder), manifest)
    lengths = read_columns(folder, ["length"], verify=False, whole=True)["length"]
    return f"{len(manifest['chunks'])} chunks, {len(lengths):,} examples, {int(lengths.sum()):,} tokens"
