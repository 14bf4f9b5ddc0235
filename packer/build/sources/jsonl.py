"""JSON Lines input (plain, .gz or .zst; local or a URL): byte ranges read where they are tokenized.

The driver learns only each file's size and cuts it into RANGE_BYTES byte ranges (a compressed file,
which cannot be entered part way, is one range). Workers count the records of their range (`count`,
a map step) and say where every chunk_records-th record starts; from those counts alone the driver
numbers the records and cuts the chunks, and each chunk is read again by the worker that tokenizes
it (`read`). No line passes through the driver. A range owns the lines that start inside it, so
every line is read by exactly one chunk. A record's location is its 1-based line.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

import msgspec
import numpy as np

from packer.core.errors import InputError
from packer.build.sources.base import Chunk, Columns, Record
from packer.core.storage import open_input


def decompressed(raw: IO[bytes], path: str) -> IO[bytes]:
    """The bytes of a JSON Lines file as stored in `raw`, decompressed by the path's suffix (.gz, .zst)."""
    if str(path).endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if str(path).endswith(".zst"):
        return io.BufferedReader(_CheckedZstd(raw), 1 << 20)
    return raw


class _CheckedZstd(io.RawIOBase):
    """A .zst file decompressed as a stream that raises EOFError when the data ends inside a frame.

    zstandard's stream_reader ends quietly at a truncated frame, which would drop the records after
    the cut without a word; here every frame must be complete, and frames may follow each other.
    """

    def __init__(self, raw: IO[bytes]):
        import zstandard  # imported here: only .zst inputs need it

        self._zstd = zstandard
        self._file = raw
        self._dec = zstandard.ZstdDecompressor().decompressobj()
        self._started = False  # whether the current frame has received any bytes
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            block = self._file.read(1 << 20)
            if not block:
                if self._started and not self._dec.eof:
                    raise EOFError("the zstd stream ends inside a frame (truncated)")
                return 0
            while block:
                if self._dec.eof:  # the next frame starts here
                    self._dec = self._zstd.ZstdDecompressor().decompressobj()
                self._started = True
                self._buf += self._dec.decompress(block)
                block = self._dec.unused_data if self._dec.eof else b""
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


RANGE_BYTES = 32 * 2**20  # bytes of an uncompressed file one counting task reads


@dataclass(frozen=True)
class Range:
    """Bytes [start, end) of one file (end None: to the end, for compressed files)."""

    path: str
    start: int
    end: int | None


def compressed(path: str) -> bool:
    return str(path).endswith((".gz", ".zst"))


def ranges(path: str, size: int, range_bytes: int | None = None) -> list[Range]:
    """A file's counting ranges, from its size alone (driver side); range_bytes defaults to RANGE_BYTES."""
    range_bytes = range_bytes or RANGE_BYTES
    if compressed(path) or size <= range_bytes:
        return [Range(str(path), 0, None)]
    return [Range(str(path), a, min(a + range_bytes, size)) for a in range(0, size, range_bytes)]


READ_BYTES = 1 << 20  # bytes a read takes; its lines are split in C (bytes.split), not one readline each


def _owned(rng: Range) -> Iterator[tuple[np.ndarray, list[bytes]]]:
    """The lines that start inside the range, a read's worth at a time: (their byte positions, the lines
    without their newlines); a compressed stream's positions are offsets into its decompressed bytes. A line
    longer than a read is joined once, not copied per read. Damaged compression is an InputError naming the
    line."""
    line_no = 0
    with open_input(rng.path) as raw:
        try:
            if compressed(rng.path):
                f, pos = decompressed(raw, rng.path), 0
            else:
                f, pos = raw, rng.start
                if rng.start:  # the line that started before the range belongs to the range before
                    raw.seek(rng.start - 1)
                    if raw.read(1) != b"\n":
                        pos += len(raw.readline())
            pending: list[bytes] = []  # the start of a line whose end is not read yet
            while rng.end is None or pos < rng.end:
                block = f.read(READ_BYTES)
                if not block:
                    if pending:  # the last line, with no newline after it
                        yield np.array([pos], np.int64), [b"".join(pending)]
                    return
                pending.append(block)
                if b"\n" not in block:
                    continue
                lines = b"".join(pending).split(b"\n")
                tail = lines.pop()  # after the read's last newline: the start of the next line, or b""
                pending = [tail] if tail else []
                ends = pos + np.cumsum(np.fromiter(map(len, lines), np.int64, len(lines)) + 1)
                starts = np.concatenate([[pos], ends[:-1]])
                if rng.end is not None and ends[-1] > rng.end:  # the range ends in this read
                    k = int(np.searchsorted(starts, rng.end))
                    yield starts[:k], lines[:k]
                    return
                yield starts, lines
                pos = int(ends[-1])
                line_no += len(lines)
        except (EOFError, OSError) as e:  # truncated or damaged compression: never a quiet short read
            raise InputError(rng.path, line_no + 1, None, f"cannot be decompressed ({_why(e)})",
                             "the file is truncated or damaged; re-download or re-compress it "
                             "(--skip-bad does not skip damaged compression)") from None
        except Exception as e:
            if type(e).__name__ == "ZstdError":
                raise InputError(rng.path, line_no + 1, None, f"cannot be decompressed ({_why(e)})",
                                 "the file is truncated or damaged; re-download or re-compress it") from None
            raise


def _filled(lines: list[bytes]) -> np.ndarray:
    """Which lines are not blank (bytes.strip: ASCII whitespace), without a Python step per line."""
    return np.fromiter(map(bool, map(bytes.strip, lines)), bool, len(lines))


@dataclass(frozen=True)
class Counted:
    """What a worker learns from one range: its lines, and its chunks as (start byte, lines before the
    chunk within the range, records) with at most chunk_records records each (a compressed file is one
    chunk: it cannot be entered part way)."""

    lines: int
    chunks: tuple[tuple[int, int, int], ...]


def count(task: tuple[Range, int]) -> Counted:
    """Map step: count one range's lines and records, cutting it every chunk_records records (a compressed
    range is one chunk). Whole-read array work: no Python step per line."""
    rng, chunk_records = task
    limit = None if compressed(rng.path) else chunk_records
    lines, records, chunks = 0, 0, []  # records: of the open chunk, chunks[-1]
    for starts, block in _owned(rng):
        filled = np.flatnonzero(_filled(block))
        # Where new chunks start among this read's records: the open chunk takes what it has room for, new
        # chunks start every limit records after (a compressed range: the first record only).
        if limit is None:
            opens = np.arange(0 if chunks else min(len(filled), 1))
        else:
            opens = np.arange(limit - records if chunks else 0, len(filled), limit)
        head = int(opens[0]) if len(opens) else len(filled)
        if chunks:
            records += head
        for j, k in zip(opens.tolist(), opens[1:].tolist() + [len(filled)]):
            if chunks:
                chunks[-1] = (*chunks[-1][:2], records)
            chunks.append((int(starts[filled[j]]), lines + int(filled[j]), 0))
            records = k - j
        lines += len(block)
    if chunks:
        chunks[-1] = (*chunks[-1][:2], records)
    return Counted(lines, tuple(chunks))


def claims(path: str) -> bool:
    """Every file no other source claims: .jsonl, .json, .jsonl.gz, .jsonl.zst and anything else."""
    return True


def scan(files: Sequence[tuple[int, str]], chunk_records: int, columns: Sequence[Columns], map_fn: Callable,
         size: Callable[[int], int]) -> dict[int, list[Chunk]]:
    """Driver side: each file's chunks (records numbered from 0 within the file). The driver learns only
    the sizes and cuts ranges; one map step (map_fn, an executor's map) counts every file's ranges."""
    rngs = {i: ranges(path, size(i)) for i, path in files}
    tasks = [(r, chunk_records) for i, _ in files for r in rngs[i]]
    results = iter(list(map_fn(count, tasks)) if tasks else [])
    return {i: chunks(i, rngs[i], [next(results) for _ in rngs[i]], 0) for i, _ in files}


def chunks(file_index: int, rngs: Sequence[Range], counted: Sequence[Counted], first_record: int) -> list[Chunk]:
    """Driver side: one file's chunks from its ranges' counts (records numbered from first_record)."""
    out, record, lines = [], first_record, 0
    for rng, c in zip(rngs, counted):
        bounds = [s for s, _, _ in c.chunks[1:]] + [rng.end]
        for (start, before, n), end in zip(c.chunks, bounds):
            out.append(Chunk(file_index, rng.path, record, n, payload=(start, end, lines + before + 1)))
            record += n
        lines += c.lines
    return out


def _chunk_range(chunk: Chunk) -> tuple[Range, int]:
    """The range a chunk's lines are read from, and the 1-based number of its first line."""
    start, end, line_no = chunk.payload
    if compressed(chunk.path):  # one chunk, read from the stream's start: its lines are numbered from 1
        return Range(chunk.path, 0, None), 1
    return Range(chunk.path, start, end), line_no


def lines(chunk: Chunk) -> Iterator[tuple[int, bytes]]:
    """Worker side: (1-based line number, raw bytes) of each non-blank line of the chunk, undecoded."""
    for numbers, raws in line_blocks(chunk, READ_BYTES):
        yield from zip(numbers, raws)


def line_blocks(chunk: Chunk, size: int) -> Iterator[tuple[list[int], list[bytes]]]:
    """Worker side: the chunk's non-blank lines, undecoded, in blocks of `size` (the last may be shorter):
    (their 1-based line numbers, their bytes). No Python step per line where a read has no blank line."""
    rng, line_no = _chunk_range(chunk)
    numbers: list[int] = []
    raws: list[bytes] = []
    for _, block in _owned(rng):
        filled = _filled(block)
        if filled.all():
            keep, at = block, range(line_no, line_no + len(block))
        else:
            kept = np.flatnonzero(filled)
            keep, at = [block[i] for i in kept.tolist()], (kept + line_no).tolist()
        line_no += len(block)
        i = 0
        while i < len(keep):  # an index walks the read: slicing off what is taken would copy the rest each time
            room = size - len(raws)
            raws.extend(keep[i:i + room])
            numbers.extend(at[i:i + room])
            i += room
            if len(raws) == size:
                yield numbers, raws
                numbers, raws = [], []
    if raws:
        yield numbers, raws


def read(chunk: Chunk, columns: Columns) -> Iterator[Record]:
    """Worker side: each line of the chunk decoded, or the InputError that says why it cannot be."""
    for line_no, raw in lines(chunk):
        try:
            yield Record(chunk.path, line_no, line_no, parse_line(chunk.path, line_no, raw))
        except InputError as e:
            yield Record(chunk.path, line_no, line_no, e)


def _why(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


_FAST_DECODE = msgspec.json.Decoder().decode


def parse_line(path: str, line_no: int, raw: bytes) -> dict:
    """Decode one JSON object, or raise an InputError naming file and line.

    msgspec decodes (~3x json's speed); whatever it refuses (NaN and Infinity, lone surrogate escapes, a
    BOM, malformed lines) is decoded by json, whose result and errors are the reference: msgspec accepts
    only standard JSON, which both decode to the same values (big integers and duplicate keys included)."""
    if raw[:1] == b"{":
        try:
            obj = _FAST_DECODE(raw)
            if isinstance(obj, dict):
                return obj
        except msgspec.MsgspecError:
            pass
    try:
        obj = json.loads(raw)  # bytes: json decodes UTF-8 itself, one pass fewer
    except UnicodeDecodeError as e:
        raise InputError(path, line_no, None, f"is not valid UTF-8 ({e.reason} at byte {e.start})",
                         "re-encode the file as UTF-8 or pass --skip-bad") from None
    except json.JSONDecodeError as e:
        raise InputError(path, line_no, None, f"malformed JSON: {e.msg} at column {e.colno}",
                         "fix the line or pass --skip-bad") from None
    except RecursionError:
        raise InputError(path, line_no, None, "malformed JSON: nested too deeply to read",
                         "fix the line or pass --skip-bad") from None
    if b"\\ud" in raw or b"\\uD" in raw:  # escaped surrogates: a lone one is text no tokenizer can take
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(path, line_no, None, "holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), "
                             "which is not text", "fix the line or pass --skip-bad") from None
    if not isinstance(obj, dict):
        raise InputError(path, line_no, None, f"expected a JSON object, got {type(obj).__name__}",
                         "each line must be one object")
    return obj
