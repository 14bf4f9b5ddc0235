"""JSON Lines input (plain, .gz or .zst; local or a URL): raw lines in bounded chunks, parsed where they land.

The driver streams each file once, cutting its non-blank lines into chunks of `chunk_records`; the
lines travel with the chunk and are decoded by the worker that tokenizes them. A record's location is
its 1-based line.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from packer.errors import InputError
from packer.sources.base import Chunk, Columns, Record
from packer.storage import open_input


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


def scan(path: str, file_index: int, first_record: int, chunk_records: int, columns: Columns) -> Iterator[Chunk]:
    """Yield the non-blank lines of one file, in order, in chunks of at most `chunk_records`.

    Chunks never span two files, so chunking depends only on each file's contents, and the
    same inputs always give the same chunks (whatever the executor). `columns` is not used: a JSON
    record's fields are checked record by record.
    """
    record = first_record
    lines: list[bytes] = []
    numbers: list[int] = []
    first = record
    line_no = 0
    with open_input(str(path)) as raw, decompressed(raw, path) as f:
        try:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                lines.append(line)
                numbers.append(line_no)
                record += 1
                if len(lines) == chunk_records:
                    yield Chunk(file_index, str(path), first, len(lines), payload=(lines, numbers))
                    lines, numbers, first = [], [], record
        except (EOFError, OSError) as e:  # truncated or damaged compression: never a quiet short read
            raise InputError(str(path), line_no + 1, None, f"cannot be decompressed ({_why(e)})",
                             "the file is truncated or damaged; re-download or re-compress it "
                             "(--skip-bad does not skip damaged compression)") from None
        except Exception as e:
            if type(e).__name__ == "ZstdError":
                raise InputError(str(path), line_no + 1, None, f"cannot be decompressed ({_why(e)})",
                                 "the file is truncated or damaged; re-download or re-compress it") from None
            raise
    if lines:
        yield Chunk(file_index, str(path), first, len(lines), payload=(lines, numbers))


def read(chunk: Chunk, columns: Columns) -> Iterator[Record]:
    """Worker side: each line of the chunk decoded, or the InputError that says why it cannot be."""
    lines, numbers = chunk.payload
    for raw, line_no in zip(lines, numbers):
        try:
            yield Record(chunk.path, line_no, line_no, parse_line(chunk.path, line_no, raw))
        except InputError as e:
            yield Record(chunk.path, line_no, line_no, e)


def _why(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def parse_line(path: str, line_no: int, raw: bytes) -> dict:
    """Decode one JSON object, or raise an InputError naming file and line."""
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
