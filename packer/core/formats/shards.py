"""The shard file format: the only module that knows bytes (docs/FORMAT.md is its specification).

A shard is a 64-byte header followed by seven arrays, each starting at a multiple of 64 bytes::

    header   magic b"PKSHARD\\0", version u32, token dtype code u32,
             num_packs u64, num_segments u64, num_tokens u64, pack_len u64, 16 bytes zero
    tokens               [T]     uint16 (code 1) or uint32 (code 2)
    loss_mask            [T]     uint8   1 = the token is a training target
    pack_token_offsets   [P+1]   int64   pack p is tokens[o[p]:o[p+1]]
    pack_segment_offsets [P+1]   int64   pack p holds segments [s[p], s[p+1])
    segment_lengths      [S]     int32
    segment_example      [S]     int64   record number of the segment's source example
    segment_start        [S]     int32   where the segment starts within that example (split pieces)

Little-endian throughout; readable with numpy.memmap and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from packer.core.errors import FormatError

MAGIC = b"PKSHARD\0"
VERSION = 1
FOLDER_FORMAT = "packer-shards"  # the shards folder's manifest.json: format name and version
FOLDER_VERSION = 3  # 2: manifests carry manifest_sha256; readers check structure on every open; 3: sources, input identities
HEADER = struct.Struct("<8sIIQQQQ16x")  # 64 bytes
ALIGN = 64
TOKEN_DTYPES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}


def token_dtype_code(vocab_size: int) -> int:
    """uint16 when every id fits (GPT-2: 50257 < 2**16), else uint32 (Llama 3: 128256)."""
    return 1 if vocab_size <= 2**16 else 2


def shard_name(index: int) -> str:
    """File name of shard `index` in a shards folder: entry i of the manifest must name shard_name(i)."""
    return f"shard-{index:05d}.bin"


def _layout(code: int, packs: int, segments: int, tokens: int) -> list[tuple[str, np.dtype, int, int]]:
    """(name, dtype, count, byte offset) of each array, and implicitly the file size."""
    spec = [
        ("tokens", TOKEN_DTYPES[code], tokens),
        ("loss_mask", np.dtype("u1"), tokens),
        ("pack_token_offsets", np.dtype("<i8"), packs + 1),
        ("pack_segment_offsets", np.dtype("<i8"), packs + 1),
        ("segment_lengths", np.dtype("<i4"), segments),
        ("segment_example", np.dtype("<i8"), segments),
        ("segment_start", np.dtype("<i4"), segments),
    ]
    out, pos = [], HEADER.size
    for name, dt, n in spec:
        pos = -(-pos // ALIGN) * ALIGN
        out.append((name, dt, n, pos))
        pos += n * dt.itemsize
    return out


SHARD_OVERHEAD = HEADER.size + 2 * 8 + 7 * (ALIGN - 1)
"""Bytes of a shard beyond its packs' own (pack_bytes): the header, the offsets' closing entries and
at most ALIGN - 1 bytes of padding before each of the seven arrays."""


def pack_bytes(code: int, tokens: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Bytes each pack adds to a shard: per token its id and mask byte, per segment 16 (length i4,
    example i8, start i4), per pack 16 (two offsets i8). With SHARD_OVERHEAD, a shard's exact bound."""
    return np.asarray(tokens, np.int64) * (TOKEN_DTYPES[code].itemsize + 1) + np.asarray(segments, np.int64) * 16 + 16


def file_size(code: int, packs: int, segments: int, tokens: int) -> int:
    name, dt, n, off = _layout(code, packs, segments, tokens)[-1]
    return off + n * dt.itemsize


@dataclass(frozen=True)
class Shard:
    """Memory-mapped views of one shard file (no copies; see the module docstring for shapes)."""

    path: str
    pack_len: int
    tokens: np.ndarray
    loss_mask: np.ndarray
    pack_token_offsets: np.ndarray
    pack_segment_offsets: np.ndarray
    segment_lengths: np.ndarray
    segment_example: np.ndarray
    segment_start: np.ndarray

    @property
    def num_packs(self) -> int:
        return len(self.pack_token_offsets) - 1


def write_shard(path: str | Path, *, pack_len: int, code: int, tokens, loss_mask,
                pack_token_offsets: np.ndarray, pack_segment_offsets: np.ndarray,
                segment_lengths: np.ndarray, segment_example: np.ndarray, segment_start: np.ndarray,
                num_tokens: int | None = None) -> int:
    """Write one shard; returns its size in bytes. Callers write inside a temporary stage folder.

    tokens and loss_mask are arrays, or iterables of blocks (then num_tokens gives their length), so a
    writer never needs the whole shard in memory.
    """
    arrays = {"tokens": tokens, "loss_mask": loss_mask, "pack_token_offsets": pack_token_offsets,
              "pack_segment_offsets": pack_segment_offsets, "segment_lengths": segment_lengths,
              "segment_example": segment_example, "segment_start": segment_start}
    packs, segments = len(pack_token_offsets) - 1, len(segment_lengths)
    ntok = len(tokens) if num_tokens is None else num_tokens
    with open(path, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, code, packs, segments, ntok, pack_len))
        for name, dt, n, off in _layout(code, packs, segments, ntok):
            f.write(b"\0" * (off - f.tell()))
            parts = [arrays[name]] if isinstance(arrays[name], np.ndarray) else arrays[name]
            written = 0
            for part in parts:
                a = np.ascontiguousarray(part, dtype=dt)
                f.write(memoryview(a).cast("B"))  # no bytes copy of the array
                written += len(a)
            if written != n:
                raise ValueError(f"{name}: {written} entries, expected {n}")
        return f.tell()


def open_shard(path: str | Path) -> Shard:
    """Map a shard file, checking magic, version, dtype code and size; FormatError names the file."""
    path = str(path)
    hint = "re-run `packer write` (or `packer pack`) to rebuild the shards"
    p = Path(path)
    if not p.is_file():
        raise FormatError(path, "shard file is missing", hint)
    size = p.stat().st_size
    if size < HEADER.size:
        raise FormatError(path, f"truncated: {size} bytes, shorter than the {HEADER.size}-byte header", hint)
    with open(path, "rb") as f:
        magic, version, code, packs, segments, ntok, pack_len = HEADER.unpack(f.read(HEADER.size))
    if magic != MAGIC:
        raise FormatError(path, f"not a packer shard (magic {magic!r})", hint)
    if version != VERSION:
        raise FormatError(path, f"format version {version}; this packer reads version {VERSION}",
                          "upgrade packer or rebuild the shards")
    if code not in TOKEN_DTYPES:
        raise FormatError(path, f"unknown token dtype code {code}", hint)
    expected = file_size(code, packs, segments, ntok)
    if size != expected:
        raise FormatError(path, f"truncated or padded: {size} bytes, header implies {expected}", hint)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    views = {name: np.frombuffer(mm, dtype=dt, count=n, offset=off)
             for name, dt, n, off in _layout(code, packs, segments, ntok)}
    return Shard(path=path, pack_len=int(pack_len), **views)


def read_slice(shard: Shard, name: str, start: int, stop: int) -> np.ndarray:
    """Entries [start, stop) of one of a shard's arrays, read with pread into a fresh array.

    For whole-shard scans (the report): reading through the map would fault page-cache folios into
    the process (Linux maps whole folios per fault), so a scan's RSS would grow with the shard.
    """
    code = next(c for c, dt in TOKEN_DTYPES.items() if dt == shard.tokens.dtype)
    layout = {n: (dt, count, off) for n, dt, count, off in
              _layout(code, len(shard.pack_token_offsets) - 1, len(shard.segment_lengths), len(shard.tokens))}
    dt, count, off = layout[name]
    start, stop = max(0, int(start)), min(int(stop), count)
    out = np.empty(max(0, stop - start), dtype=dt)
    if len(out):
        with open(shard.path, "rb") as f:
            f.seek(off + start * dt.itemsize)
            if f.readinto(memoryview(out).cast("B")) != out.nbytes:
                raise FormatError(shard.path, f"{name}: short read", "the shard changed while it was read")
    return out


def check_shard(shard: Shard, pack_len: int | None = None) -> None:
    """Structural validation of a mapped shard, O(packs + segments) and no hashing: every offset a
    reader or the compiled batch kernel will follow is checked before it is used.

    Raises FormatError naming the file, the field and the first bad pack: offsets that do not run
    from 0 to the array's end or go backwards, empty packs or segments, a pack's segments not summing
    to its tokens, a pack longer than pack_len (the header's, which must equal `pack_len` if given),
    negative record numbers or starts.
    """
    path, hint = shard.path, "the shard is damaged; re-run `packer write` (or `packer pack`) to rebuild it"
    T, S = len(shard.tokens), len(shard.segment_lengths)
    if pack_len is not None and shard.pack_len != pack_len:
        raise FormatError(path, f"header pack_len {shard.pack_len} differs from the manifest's {pack_len}", hint)
    for name, offsets, end in (("pack_token_offsets", shard.pack_token_offsets, T),
                               ("pack_segment_offsets", shard.pack_segment_offsets, S)):
        if offsets[0] != 0 or offsets[-1] != end:
            raise FormatError(path, f"{name} runs from {int(offsets[0])} to {int(offsets[-1])}, not 0 to {end}", hint)
        step = np.diff(offsets)
        bad = np.flatnonzero(step <= 0)
        if bad.size:
            p = int(bad[0])
            raise FormatError(path, f"{name} of pack {p}: {int(offsets[p])} to {int(offsets[p + 1])} "
                              "(packs are never empty and offsets never go back)", hint)
    sizes = np.diff(shard.pack_token_offsets)
    over = np.flatnonzero(sizes > shard.pack_len)
    if over.size:
        p = int(over[0])
        raise FormatError(path, f"pack {p} has {int(sizes[p])} tokens, more than pack_len {shard.pack_len}", hint)
    lengths = shard.segment_lengths
    if S and int(lengths.min()) <= 0:
        q = int(np.flatnonzero(lengths <= 0)[0])
        p = int(np.searchsorted(shard.pack_segment_offsets, q, "right") - 1)
        raise FormatError(path, f"segment_lengths[{q}] (pack {p}) is {int(lengths[q])}", hint)
    cs = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    per_pack = cs[shard.pack_segment_offsets[1:]] - cs[shard.pack_segment_offsets[:-1]]
    bad = np.flatnonzero(per_pack != sizes)
    if bad.size:
        p = int(bad[0])
        raise FormatError(path, f"pack {p}: segment_lengths sum to {int(per_pack[p])}, pack_token_offsets give "
                          f"{int(sizes[p])} tokens", hint)
    for name in ("segment_example", "segment_start"):
        a = getattr(shard, name)
        if S and int(a.min()) < 0:
            q = int(np.flatnonzero(a < 0)[0])
            raise FormatError(path, f"{name}[{q}] is {int(a[q])}, a negative record position", hint)
