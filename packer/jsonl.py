"""Streaming JSON Lines input: plain, .gz or .zst; raw lines in bounded chunks, parsed where they land."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from packer.errors import InputError
from packer.manifest import sha256_file


@dataclass(frozen=True)
class RawChunk:
    """Up to `chunk_records` consecutive non-blank lines of one file, still undecoded."""

    index: int
    """0-based number of this chunk over the whole run (names its output file)."""
    file_index: int
    """Position of the file among the inputs."""
    path: str
    lines: list[bytes]
    line_numbers: list[int]
    """1-based line number of each entry in `lines`."""
    first_record: int
    """Record number of lines[0] among all records (non-blank lines) of all inputs, 0-based."""


def open_text(path: str | Path) -> IO[bytes]:
    """Open a possibly compressed JSON Lines file for binary reading, chosen by its suffix."""
    p = Path(path)
    if not p.is_file():
        raise InputError(str(p), None, None, "no such file", "check the path given as DATA")
    if p.suffix == ".gz":
        return gzip.open(p, "rb")
    if p.suffix == ".zst":
        return io.BufferedReader(_CheckedZstd(p), 1 << 20)
    return open(p, "rb")


class _CheckedZstd(io.RawIOBase):
    """A .zst file decompressed as a stream that raises EOFError when the data ends inside a frame.

    zstandard's stream_reader ends quietly at a truncated frame, which would drop the records after
    the cut without a word; here every frame must be complete, and frames may follow each other.
    """

    def __init__(self, path: Path):
        import zstandard  # imported here: only .zst inputs need it

        self._zstd = zstandard
        self._file = open(path, "rb")
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


def file_digest(path: str | Path) -> str:
    """sha256 of the file's bytes as stored (the input's identity in every manifest)."""
    if not Path(path).is_file():
        raise InputError(str(path), None, None, "no such file", "check the path given as DATA")
    return sha256_file(Path(path))


def iter_chunks(paths: list[str], chunk_records: int) -> Iterator[RawChunk]:
    """Yield the non-blank lines of every file, in order, in chunks of at most `chunk_records`.

    Chunks never span two files, so chunking depends only on each file's contents, and the
    same inputs always give the same chunks (whatever the number of workers).
    """
    chunk_index = 0
    record = 0
    for file_index, path in enumerate(paths):
        lines: list[bytes] = []
        numbers: list[int] = []
        first = record
        line_no = 0
        with open_text(path) as f:
            try:
                for line_no, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    lines.append(line)
                    numbers.append(line_no)
                    record += 1
                    if len(lines) == chunk_records:
                        yield RawChunk(chunk_index, file_index, str(path), lines, numbers, first)
                        chunk_index += 1
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
            yield RawChunk(chunk_index, file_index, str(path), lines, numbers, first)
            chunk_index += 1


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
