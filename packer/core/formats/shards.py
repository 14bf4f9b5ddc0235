"""The shards format (stage 3's output, what training reads): shard files and the folder that lists them.

The only module that knows these bytes (docs/FORMAT.md is its specification): the shard file
(write_shard, open_shard, check_shard) and the shards folder's manifest (ShardSet, which opens a
folder and checks it before anything reads it).

A shard is a 64-byte header followed by eleven arrays, each starting at a multiple of 64 bytes: first the
metadata (its "head": everything but the tokens and the loss mask, one byte range that a streaming reader
fetches and checks whole against the manifest's head_sha256), then the packs' bytes, which a streaming reader
fetches pack by pack and checks against the head's per-pack checksums (packer.core.rangestore)::

    header   magic b"PKSHARD\\0", version u32, token dtype code u32,
             num_packs u64, num_segments u64, num_tokens u64, pack_len u64, 16 bytes zero
    pack_token_offsets   [P+1]   int64   pack p is tokens[o[p]:o[p+1]]
    pack_segment_offsets [P+1]   int64   pack p holds segments [s[p], s[p+1])
    segment_lengths      [S]     int32
    segment_example      [S]     int64   record number of the segment's source example
    segment_start        [S]     int32   where the segment starts within that example (split pieces)
    segment_role         [S]     uint8   0 plain; preference: 1 chosen, 2 rejected, 3 desirable, 4 undesirable,
                                         5 KTO's mismatched (KL) completion, 6 a shared prompt (the replies after
                                         it in the pack continue it: packer.build.preference)
    pack_labels          [P]     int64   labelled positions of each pack (either label mode; labels_per_pack)
    pack_tokens_xxh3     [P]     uint64  xxh3-64 of each pack's token bytes
    pack_mask_xxh3       [P]     uint64  xxh3-64 of each pack's loss-mask bytes
    tokens               [T]     uint16 (code 1) or uint32 (code 2)
    loss_mask            [T]     uint8   1 = the token is a training target

Little-endian throughout; readable with numpy.memmap and nothing else.

Every open of a folder (ShardSet) checks the structure, O(metadata) and no hashing: the manifest's
seal and entries (names, counts, sizes), each shard file a regular file inside the folder, its header
and offsets (check_shard), and in a run folder that the shards belong to the plan beside them. Token
ids and mask bytes are checked per pack as they are read (check_values). The files' sha256 is checked
once per run and machine (packer.core.manifest.verify_once).
"""

from __future__ import annotations

import contextlib
import json
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from packer.core.errors import REBUILD_HINT, ConfigError, FormatError
from packer.core.manifest import MANIFEST, check_files, read_manifest, verify_once
from packer.core.ranges import within
from packer.core.labels import labels_per_pack
from packer.core.roles import MAX_SEGMENT_ROLE, PROMPT
from packer.core.storage import is_url

MAGIC = b"PKSHARD\0"
VERSION = 3  # 2: segment_role; 3: the head first, with per-pack labels and xxh3 checksums (range streaming)
MAX_ROLE = MAX_SEGMENT_ROLE
FOLDER_FORMAT = "packer-shards"  # the shards folder's manifest.json: format name and version
FOLDER_VERSION = 7  # 2: manifests carry manifest_sha256; readers check structure on every open; 3: sources, input
# identities; 4: the tokenize config's rendering limits and counts.per_file (from stages 1 and 2); 5: shards[*].head_sha256;
# 6: the tokenize config's processor, the plan config's max_patches, and runs with images (images, images-NNNNN.bin);
# 7: heads.bin (every shard's head, in order: a streaming reader's one request at open), the plan config's even keys
HEADS = "heads.bin"
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
        ("pack_token_offsets", np.dtype("<i8"), packs + 1),
        ("pack_segment_offsets", np.dtype("<i8"), packs + 1),
        ("segment_lengths", np.dtype("<i4"), segments),
        ("segment_example", np.dtype("<i8"), segments),
        ("segment_start", np.dtype("<i4"), segments),
        ("segment_role", np.dtype("u1"), segments),
        ("pack_labels", np.dtype("<i8"), packs),
        ("pack_tokens_xxh3", np.dtype("<u8"), packs),
        ("pack_mask_xxh3", np.dtype("<u8"), packs),
        ("tokens", TOKEN_DTYPES[code], tokens),
        ("loss_mask", np.dtype("u1"), tokens),
    ]
    return _place(spec, HEADER.size)


def _place(spec: list[tuple[str, np.dtype, int]], start: int) -> list[tuple[str, np.dtype, int, int]]:
    """(name, dtype, count, byte offset) of arrays laid out from `start`, each at the next multiple of ALIGN."""
    out, pos = [], start
    for name, dt, n in spec:
        pos = -(-pos // ALIGN) * ALIGN
        out.append((name, dt, n, pos))
        pos += n * dt.itemsize
    return out


SHARD_OVERHEAD = HEADER.size + 2 * 8 + 11 * (ALIGN - 1)
"""Bytes of a shard beyond its packs' own (pack_bytes): the header, the offsets' closing entries and
at most ALIGN - 1 bytes of padding before each of the eleven arrays."""


def pack_bytes(code: int, tokens: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Bytes each pack adds to a shard: per token its id and mask byte, per segment 17 (length i4,
    example i8, start i4, role u1), per pack 40 (two offsets, its labels and two checksums, 8 bytes each).
    With SHARD_OVERHEAD, a shard's exact bound."""
    return np.asarray(tokens, np.int64) * (TOKEN_DTYPES[code].itemsize + 1) + np.asarray(segments, np.int64) * 17 + 40


def head_size(code: int, packs: int, segments: int, tokens: int) -> int:
    """Bytes of a shard's head: the header and the metadata arrays, everything before the tokens."""
    return next(off for name, _, _, off in _layout(code, packs, segments, tokens) if name == "tokens")


def head_sha256(path: str | Path) -> str:
    """sha256 of a shard file's head (recorded per shard in the manifest: a streaming reader's trust root)."""
    import hashlib

    with open(path, "rb") as f:
        _, _, code, packs, segments, ntok, _ = HEADER.unpack(f.read(HEADER.size))
        f.seek(0)
        return hashlib.sha256(f.read(head_size(code, packs, segments, ntok))).hexdigest()


def heads_of(paths: list) -> bytes:
    """The bytes of heads.bin: each shard file's head (header and metadata arrays), in the order given."""
    out = []
    for path in paths:
        with open(path, "rb") as f:
            _, _, code, packs, segments, ntok, _ = HEADER.unpack(f.read(HEADER.size))
            f.seek(0)
            out.append(f.read(head_size(code, packs, segments, ntok)))
    return b"".join(out)


def pack_checksums(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """uint64 [P]: xxh3-64 of each pack's bytes of one array (`data` a slice of it from offsets[0])."""
    raw = memoryview(np.ascontiguousarray(data)).cast("B")
    size = data.dtype.itemsize
    base = int(offsets[0])
    edges = ((np.asarray(offsets, np.int64) - base) * size).tolist()
    return np.array([xxhash.xxh3_64_intdigest(raw[a:b]) for a, b in zip(edges[:-1], edges[1:])], np.uint64)


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
    segment_role: np.ndarray
    pack_labels: np.ndarray
    pack_tokens_xxh3: np.ndarray
    pack_mask_xxh3: np.ndarray
    head: int = 0
    """Bytes of the head (header and metadata): the packs' token bytes start here."""
    mask_at: int = 0
    """Where the loss mask starts in the file."""

    @property
    def num_packs(self) -> int:
        return len(self.pack_token_offsets) - 1


def write_shard(path: str | Path, *, pack_len: int, code: int, tokens, loss_mask,
                pack_token_offsets: np.ndarray, pack_segment_offsets: np.ndarray,
                segment_lengths: np.ndarray, segment_example: np.ndarray, segment_start: np.ndarray,
                segment_role: np.ndarray | None = None, num_tokens: int | None = None) -> int:
    """Write one shard; returns its size in bytes. Callers write inside a temporary stage folder.

    tokens and loss_mask are arrays, or iterables of blocks (then num_tokens gives their length), so a
    writer never needs the whole shard in memory.
    """
    packs, segments = len(pack_token_offsets) - 1, len(segment_lengths)
    ntok = len(tokens) if num_tokens is None else num_tokens
    arrays = {"tokens": tokens, "loss_mask": loss_mask, "pack_token_offsets": pack_token_offsets,
              "pack_segment_offsets": pack_segment_offsets, "segment_lengths": segment_lengths,
              "segment_example": segment_example, "segment_start": segment_start,
              "segment_role": np.zeros(len(segment_lengths), np.uint8) if segment_role is None else segment_role,
              # filled in below, once the packs' bytes are on disk
              "pack_labels": np.zeros(packs, np.int64), "pack_tokens_xxh3": np.zeros(packs, np.uint64),
              "pack_mask_xxh3": np.zeros(packs, np.uint64)}
    layout = _layout(code, packs, segments, ntok)
    with open(path, "w+b") as f:
        f.write(HEADER.pack(MAGIC, VERSION, code, packs, segments, ntok, pack_len))
        for name, dt, n, off in layout:
            f.write(b"\0" * (off - f.tell()))
            parts = [arrays[name]] if isinstance(arrays[name], np.ndarray) else arrays[name]
            written = 0
            for part in parts:
                a = np.ascontiguousarray(part, dtype=dt)
                f.write(memoryview(a).cast("B"))  # no bytes copy of the array
                written += len(a)
            if written != n:
                raise ValueError(f"{name}: {written} entries, expected {n}")
        size = f.tell()
        _fill_pack_sums(f, layout, np.asarray(pack_token_offsets, np.int64), np.asarray(pack_segment_offsets, np.int64),
                        np.asarray(segment_lengths, np.int64), np.asarray(arrays["segment_role"], np.uint8))
        return size


_SUM_TOKENS = 1 << 20  # packs are summed and hashed about this many tokens at a time (memory stays flat)


def _fill_pack_sums(f, layout: list, tok_off: np.ndarray, seg_off: np.ndarray, seg_lens: np.ndarray,
                    roles: np.ndarray) -> None:
    """Write pack_labels and the packs' checksums from the tokens and mask just written (read back in blocks
    of packs with pread: no map of the whole shard)."""
    where = {name: (dt, off) for name, dt, _, off in layout}
    packs = len(tok_off) - 1
    T = next(n for name, _, n, _ in layout if name == "tokens")
    cs = np.concatenate([[0], np.cumsum(seg_lens)])
    if packs < 1 or tok_off[0] != 0 or tok_off[-1] != T or seg_off[0] != 0 or seg_off[-1] != len(seg_lens) or \
            (np.diff(tok_off) <= 0).any() or (np.diff(seg_off) <= 0).any() or (seg_lens <= 0).any() or \
            not np.array_equal(cs[seg_off], tok_off):
        return  # no packs, or a structure every reader refuses (check_shard): nothing to sum
    labels, tsum, msum = (np.zeros(packs, np.int64), np.zeros(packs, np.uint64), np.zeros(packs, np.uint64))
    shared = bool((roles == PROMPT).any())
    f.flush()
    a = 0
    while a < packs:
        b = max(a + 1, int(np.searchsorted(tok_off, tok_off[a] + _SUM_TOKENS, "right")) - 1)
        b = min(b, packs)
        t0, t1 = int(tok_off[a]), int(tok_off[b])
        tdt, toff = where["tokens"]
        f.seek(toff + t0 * tdt.itemsize)
        tokens = np.frombuffer(f.read((t1 - t0) * tdt.itemsize), tdt)
        f.seek(where["loss_mask"][1] + t0)
        mask = np.frombuffer(f.read(t1 - t0), np.uint8)
        tsum[a:b] = pack_checksums(tokens, tok_off[a:b + 1])
        msum[a:b] = pack_checksums(mask, tok_off[a:b + 1])
        s0, s1 = int(seg_off[a]), int(seg_off[b])
        labels[a:b] = labels_per_pack(mask, seg_lens[s0:s1], seg_off[a:b + 1] - s0, roles[s0:s1], shared)
        a = b
    for name, values in (("pack_labels", labels), ("pack_tokens_xxh3", tsum), ("pack_mask_xxh3", msum)):
        f.seek(where[name][1])
        f.write(memoryview(np.ascontiguousarray(values, where[name][0])).cast("B"))


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
        raise FormatError(path, f"shard format version {version}; this packer reads version {VERSION}",
                          "re-run `packer pack` (or `packer write`) with this packer to rewrite the shards"
                          if version < VERSION else "upgrade packer to read these shards")
    if code not in TOKEN_DTYPES:
        raise FormatError(path, f"unknown token dtype code {code}", hint)
    expected = file_size(code, packs, segments, ntok)
    if size != expected:
        raise FormatError(path, f"truncated or padded: {size} bytes, header implies {expected}", hint)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    views = {name: np.frombuffer(mm, dtype=dt, count=n, offset=off)
             for name, dt, n, off in _layout(code, packs, segments, ntok)}
    return Shard(path=path, pack_len=int(pack_len), head=head_size(code, packs, segments, ntok),
                 mask_at=_layout(code, packs, segments, ntok)[-1][3], **views)


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
    bad = np.flatnonzero((shard.pack_labels < 0) | (shard.pack_labels > sizes))
    if bad.size:
        p = int(bad[0])
        raise FormatError(path, f"pack_labels of pack {p} is {int(shard.pack_labels[p])}, not between 0 and its "
                          f"{int(sizes[p])} tokens", hint)
    if S and int(shard.segment_role.max()) > MAX_ROLE:
        q = int(np.flatnonzero(shard.segment_role > MAX_ROLE)[0])
        raise FormatError(path, f"segment_role[{q}] is {int(shard.segment_role[q])}, not a role (0-{MAX_ROLE})", hint)


def _int(entry: dict, key: str, where: str, path: Path) -> int:
    v = entry.get(key) if isinstance(entry, dict) else None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise FormatError(str(path / MANIFEST), f"{where}: '{key}' is {v!r}, not a count", REBUILD_HINT)
    return v


def check_manifest(folder: Path, manifest: dict) -> tuple[list[dict], int, int]:
    """The shard entries, pack_len and vocabulary size of a sealed shards manifest, after checking that
    they agree with each other and with the files on disk (sizes only: no hashing).

    Entry i must name shard-{i:05d}.bin, a regular file inside `folder` whose size the manifest's
    `files` records; the entries' counts must add up to the manifest's `counts`.
    """
    where = folder / MANIFEST
    entries, files, counts = manifest.get("shards"), manifest.get("files"), manifest.get("counts")
    if not isinstance(entries, list) or not isinstance(files, dict) or not isinstance(counts, dict):
        raise FormatError(str(where), "'shards', 'files' or 'counts' is missing or of the wrong type", REBUILD_HINT)
    pack_len = _int(manifest, "pack_len", "top level", folder)
    vocab = _int(manifest.get("tokenizer") or {}, "vocab_size", "tokenizer", folder)
    if pack_len < 1 or vocab < 1:
        raise FormatError(str(where), f"pack_len {pack_len} and vocab_size {vocab} must be positive", REBUILD_HINT)
    root = folder.resolve()
    for i, e in enumerate(entries):
        name = e.get("file") if isinstance(e, dict) else None
        if name != shard_name(i):
            raise FormatError(str(where), f"shards[{i}] names {name!r}, expected {shard_name(i)!r} (entries dropped, "
                              "repeated or reordered)", REBUILD_HINT)
        for key in ("packs", "segments", "tokens"):
            _int(e, key, f"shards[{i}]", folder)
        if not isinstance(e.get("head_sha256"), str) or len(e["head_sha256"]) != 64:
            raise FormatError(str(where), f"shards[{i}] has no head_sha256", REBUILD_HINT)
        p = folder / name
        try:
            st = p.stat()
        except OSError:
            raise FormatError(str(p), "shard file is missing", REBUILD_HINT) from None
        if not stat.S_ISREG(st.st_mode) or p.resolve().parent != root:
            raise FormatError(str(p), "is not a regular file inside the shards folder", REBUILD_HINT)
        meta = files.get(name)
        if not isinstance(meta, dict) or meta.get("bytes") != st.st_size:
            raise FormatError(str(p), f"truncated or grown: {st.st_size} bytes, manifest.json records "
                              f"{meta.get('bytes') if isinstance(meta, dict) else None}", REBUILD_HINT)
    for key in ("packs", "segments", "tokens"):
        total = sum(e[key] for e in entries)
        if total != _int(counts, key, "counts", folder):
            raise FormatError(str(where), f"the shards hold {total} {key}, counts.{key} says {counts[key]}", REBUILD_HINT)
    sidecars = {images_name(i) for i in range(len(entries))} if isinstance(manifest.get("images"), dict) else set()
    missing = sorted(sidecars - set(files))
    if missing:
        raise FormatError(str(where), f"'files' does not list {missing[0]}, the images of its shard", REBUILD_HINT)
    meta = files.get(HEADS)  # read by streaming readers only (they check its length and every head's sha256)
    if not isinstance(meta, dict) or not isinstance(meta.get("bytes"), int):
        raise FormatError(str(where), f"'files' does not list {HEADS}, the shards' heads", REBUILD_HINT)
    try:
        size = (folder / HEADS).stat().st_size
    except FileNotFoundError:
        raise FormatError(str(folder / HEADS), "missing (the shards' heads, read by streaming readers)",
                          REBUILD_HINT) from None
    if size != meta["bytes"]:
        raise FormatError(str(folder / HEADS), f"truncated or grown: {size} bytes, manifest.json records "
                          f"{meta['bytes']}", REBUILD_HINT)
    extra = sorted(set(files) - {e["file"] for e in entries} - sidecars - {HEADS})
    if extra:
        raise FormatError(str(where), f"'files' lists {extra[0]}, which no shard entry names", REBUILD_HINT)
    return entries, pack_len, vocab


def check_lineage(folder: Path, manifest: dict) -> None:
    """In a run folder, the shards must have been written from the plan and tokenized stages beside
    them: a rerun with new settings that stopped before its write never leaves older shards served."""
    if folder.name != "shards":
        return  # a shards folder on its own: no stages beside it to compare with
    run = folder.parent
    lineage = manifest.get("lineage") if isinstance(manifest.get("lineage"), dict) else {}
    for stage in ("plan", "tokenized"):
        other = run / stage / MANIFEST
        if not other.is_file():
            continue
        try:
            digest = json.loads(other.read_text(encoding="utf-8")).get("digest")
        except (OSError, ValueError, AttributeError):
            digest = None
        if digest != lineage.get(stage):
            raise FormatError(str(folder), f"these shards were written from another {stage} stage than "
                              f"{run / stage} (a rerun did not finish)", "re-run `packer pack` (or `packer write`) "
                              "to write the shards of the current plan")


def check_values(tokens: np.ndarray, mask: np.ndarray, vocab_size: int, path: str, pack: int) -> None:
    """Token ids below the vocabulary and loss-mask bytes 0 or 1, for the pack being read (pack -1: a
    whole shard)."""
    what = f"pack {pack}" if pack >= 0 else "the shard"
    if len(tokens) and int(tokens.max()) >= vocab_size:
        raise FormatError(path, f"{what} holds token id {int(tokens.max())}, not below the vocabulary size "
                          f"{vocab_size}", REBUILD_HINT)
    if len(mask) and int(mask.max()) > 1:
        raise FormatError(path, f"{what} has loss_mask byte {int(mask.max())}, not 0 or 1", REBUILD_HINT)


def check_pack_sums(shard: Shard, packs: np.ndarray, where: str | None = None) -> None:
    """The packs' token and mask bytes against the head's xxh3 checksums (a streaming reader checks every pack
    it fetches; `packer verify` every pack). FormatError names the shard and the first bad pack."""
    off = shard.pack_token_offsets
    for p in np.asarray(packs, np.int64).tolist():
        a, b = int(off[p]), int(off[p + 1])
        for name, data, want in (("tokens", shard.tokens, shard.pack_tokens_xxh3),
                                 ("loss_mask", shard.loss_mask, shard.pack_mask_xxh3)):
            if xxhash.xxh3_64_intdigest(memoryview(data[a:b]).cast("B")) != int(want[p]):
                raise FormatError(where or shard.path, f"pack {p}: its {name} bytes fail their checksum",
                                  REBUILD_HINT)


def resolve(path: str | Path) -> Path:
    """The shards folder: `path` itself, or `path/shards` for a run folder made by `packer pack`.

    Local folders only: a URL is resolved where the user hands it in (PackedShards, PackedLoader,
    packer export), which fetch the committed run first (packer.core.runstore.local_run)."""
    if isinstance(path, str) and is_url(path):
        raise ConfigError(f"{path}: ShardSet reads a local folder; open a URL with PackedShards('{path}') "
                          "(or packer.core.runstore.local_run, which fetches the committed run into the cache)")
    p = Path(path)
    if (p / MANIFEST).is_file() or not (p / "shards" / MANIFEST).is_file():
        return p
    return p / "shards"


class ShardSet:
    """The packs of a shards folder (or a run folder), validated and memory-mapped, as numpy views.

    The torch-free reader under packer.train.reader.PackedShards (the runtime) and packer.build.report (the
    build side): both see exactly the same checks.
    """

    def __init__(self, path: str | Path, *, verify: bool = True):
        """Open and validate a shards (or run) folder.

        Every open checks the structure (O(metadata), no hashing): the manifest's seal and entries, each
        shard file inside the folder, its size, header and offsets (packer.core.formats.shards.check_shard). With
        verify=True (the default) every file's sha256 is checked once per run: a marker in the user's
        cache, keyed by the manifest and the files' sizes and mtimes, skips it on later opens.
        """
        self.path = resolve(path)
        self.manifest = read_manifest(self.path, FOLDER_FORMAT, FOLDER_VERSION,
                                      "run `packer pack` to build the shards")
        entries, self.pack_len, self.vocab_size = check_manifest(self.path, self.manifest)
        check_lineage(self.path, self.manifest)
        config = self.manifest.get("config")
        plan = config.get("plan") if isinstance(config, dict) and isinstance(config.get("plan"), dict) else {}
        self.cp_size = plan.get("cp_size", 1)
        """The context-parallel size the packs were planned for (1: none; older runs have no such key)."""
        if not isinstance(self.cp_size, int) or isinstance(self.cp_size, bool) or self.cp_size < 1:
            raise FormatError(str(self.path / MANIFEST), f"config.plan.cp_size is {self.cp_size!r}, not a whole number "
                              ">= 1", REBUILD_HINT)
        self.layout = str(plan.get("layout", "best-fit"))
        if verify:
            verify_once(self.path, self.manifest)
        self.shards: list[Shard] = []
        for s in entries:
            shard = open_shard(self.path / s["file"])
            if shard.num_packs != s["packs"] or len(shard.tokens) != s["tokens"] or \
                    len(shard.segment_lengths) != s["segments"]:
                raise FormatError(str(self.path / s["file"]), "packs, segments or tokens differ from manifest.json",
                                  REBUILD_HINT)
            if TOKEN_DTYPES[token_dtype_code(self.vocab_size)] != shard.tokens.dtype:
                raise FormatError(str(self.path / s["file"]), f"token dtype {shard.tokens.dtype} does not match the "
                                  f"vocabulary size {self.vocab_size} in manifest.json", REBUILD_HINT)
            check_shard(shard, self.pack_len)
            self.shards.append(shard)
        self.ranges = None
        """A remote run's RangeReader (packer.core.rangestore): packs are fetched before they are read."""
        self.images_meta = self.manifest.get("images") if isinstance(self.manifest.get("images"), dict) else None
        """Runs with images: image_token, image_token_id, meta (packer.core.vision.ImageMeta's fields)."""
        self.images: list[ShardImages] = []
        if self.images_meta is not None:
            meta = self.images_meta.get("meta") if isinstance(self.images_meta.get("meta"), dict) else {}
            patch = meta.get("patch_size")
            whole_ok = all(isinstance(meta.get(k), int) and not isinstance(meta.get(k), bool) and meta[k] >= 1
                           for k in ("patch_size", "merge_size", "temporal_patch_size"))
            triples = all(isinstance(meta.get(k), list) and len(meta[k]) == 3 and
                          all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in meta[k])
                          for k in ("image_mean", "image_std"))
            kinds_ok = isinstance(meta.get("mrope", True), bool) and meta.get("layout", "patches") in ("patches", "images") \
                and isinstance(meta.get("extra_tokens", 0), int) and meta.get("extra_tokens", 0) >= -1
            if not whole_ok or not triples or not kinds_ok or 0 in meta["image_std"] or \
                    not isinstance(meta.get("rescale_factor"), (int, float)) or \
                    not isinstance(self.images_meta.get("image_token_id"), int):
                raise FormatError(str(self.path / MANIFEST), "'images' has no valid meta (patch_size, merge_size, "
                                  "temporal_patch_size, image_mean, image_std, rescale_factor) or image_token_id",
                                  REBUILD_HINT)
            self.images = [open_images(self.path / images_name(i), len(sh.segment_lengths), patch)
                           for i, sh in enumerate(self.shards)]
        self._len = sum(s.num_packs for s in self.shards)
        # Per pack: its shard and index there, as Python lists (the fastest scalar lookup).
        counts = [s.num_packs for s in self.shards]
        self._shard_of = np.repeat(np.arange(len(self.shards)), counts).tolist()
        self._local = within(np.asarray(counts, dtype=np.int64)).tolist()

    def __len__(self) -> int:
        return self._len

    def locate(self, i: int) -> tuple[Shard, int]:
        """The shard holding pack i and the pack's index within it."""
        if not -self._len <= i < self._len:
            raise IndexError(f"pack {i} out of range for {self._len} packs")
        i %= self._len
        return self.shards[self._shard_of[i]], self._local[i]

    def images_of(self, i: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Runs with images: grids int64 [I, 3] and uint8 [3, H, W] pixels of pack i's images, in token order."""
        sh, j = self.locate(i)
        k = self.shards.index(sh)
        return self.images[k].of_segments(int(sh.pack_segment_offsets[j]), int(sh.pack_segment_offsets[j + 1]))

    def reading(self, packs):
        """Context in which `packs` (global indices) can be read from the maps: for a remote run, fetched, checked
        and kept until the context ends; for a local run, nothing to do."""
        if self.ranges is None:
            return contextlib.nullcontext()
        return self.ranges.reading(np.asarray(packs, np.int64) % max(1, self._len))

    def arrays(self, i: int) -> dict[str, np.ndarray]:
        """Pack i as numpy views (tokens, loss_mask, seg_lens, example_index, segment_start, role): no copy.
        (A remote run's pack read outside `reading`: fetched and copied, since its cached bytes may go.)"""
        if self.ranges is not None and not self.ranges.is_pinned(int(i) % max(1, self._len)):
            self.locate(i)
            with self.reading([i]):
                return {k: np.array(v) for k, v in self.arrays(i).items()}
        sh, j = self.locate(i)
        a, b = sh.pack_token_offsets[j], sh.pack_token_offsets[j + 1]
        sa, sb = sh.pack_segment_offsets[j], sh.pack_segment_offsets[j + 1]
        return {"tokens": sh.tokens[a:b], "loss_mask": sh.loss_mask[a:b],
                "seg_lens": sh.segment_lengths[sa:sb], "example_index": sh.segment_example[sa:sb],
                "segment_start": sh.segment_start[sa:sb], "role": sh.segment_role[sa:sb]}


# ---------------------------------------------------------------------------------------------------------------
# Images of a run with images: one images-NNNNN.bin beside each shard-NNNNN.bin (docs/FORMAT.md).

IMAGES_MAGIC = b"PKIMAGE\0"
IMAGES_VERSION = 1
IMAGES_HEADER = struct.Struct("<8sIIQQQQ16x")  # magic, version, 0, segments, images, pixel bytes, patch size


def images_name(index: int) -> str:
    """File name of the images of shard `index` (runs with images)."""
    return f"images-{index:05d}.bin"


def _images_layout(segments: int, images: int, pixel_bytes: int) -> list[tuple[str, np.dtype, int, int]]:
    spec = [("segment_image_offsets", np.dtype("<i8"), segments + 1), ("image_grid", np.dtype("<i4"), 3 * images),
            ("image_pixel_offsets", np.dtype("<i8"), images + 1), ("pixels", np.dtype("u1"), pixel_bytes)]
    return _place(spec, IMAGES_HEADER.size)


def write_images(path: str | Path, segment_images: list, patch_size: int) -> int:
    """Write the images of one shard: per segment (in the shard's order) its images as (uint8 pixel bytes,
    grid t, h, w). Returns the file's size."""
    counts = [len(ims) for ims in segment_images]
    grids = np.array([g for ims in segment_images for _, g in ims], np.int32).reshape(-1, 3)
    sizes = [len(px) for ims in segment_images for px, _ in ims]
    arrays = {"segment_image_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
              "image_grid": grids.reshape(-1), "image_pixel_offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)}
    layout = _images_layout(len(counts), len(grids), int(sum(sizes)))
    with open(path, "wb") as f:
        f.write(IMAGES_HEADER.pack(IMAGES_MAGIC, IMAGES_VERSION, 0, len(counts), len(grids), int(sum(sizes)), patch_size))
        for name, dt, n, off in layout:
            f.write(b"\0" * (off - f.tell()))
            if name == "pixels":
                for ims in segment_images:
                    for px, _ in ims:
                        f.write(px)
            else:
                f.write(memoryview(np.ascontiguousarray(arrays[name], dt)).cast("B"))
        return f.tell()


@dataclass(frozen=True)
class ShardImages:
    """Memory-mapped views of one shard's images (see write_images)."""

    path: str
    segment_image_offsets: np.ndarray
    image_grid: np.ndarray
    image_pixel_offsets: np.ndarray
    pixels: np.ndarray
    patch_size: int

    def of_segments(self, a: int, b: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Grids [I, 3] and uint8 [3, H, W] pixels of the images of segments [a, b), in order."""
        i0, i1 = int(self.segment_image_offsets[a]), int(self.segment_image_offsets[b])
        grids = self.image_grid[3 * i0:3 * i1].reshape(-1, 3).astype(np.int64)
        P = self.patch_size
        px = [self.pixels[int(self.image_pixel_offsets[i]):int(self.image_pixel_offsets[i + 1])].reshape(3, h * P, w * P)
              for i, (_, h, w) in zip(range(i0, i1), grids.tolist())]
        return grids, px


def open_images(path: str | Path, segments: int, patch_size: int) -> ShardImages:
    """Map and check a shard's images file: header, size, offsets, grids (still images: t = 1) and each
    image's pixel bytes (3 x h*P x w*P); FormatError names the file and the first bad entry."""
    path = str(path)
    p = Path(path)
    if not p.is_file():
        raise FormatError(path, "images file is missing", REBUILD_HINT)
    size = p.stat().st_size
    if size < IMAGES_HEADER.size:
        raise FormatError(path, "truncated images file", REBUILD_HINT)
    with open(path, "rb") as f:
        magic, version, _, S, I, X, P = IMAGES_HEADER.unpack(f.read(IMAGES_HEADER.size))
    if magic != IMAGES_MAGIC or version != IMAGES_VERSION:
        raise FormatError(path, f"not a version-{IMAGES_VERSION} packer images file", REBUILD_HINT)
    if S != segments or P != patch_size:
        raise FormatError(path, f"{S} segments of patch size {P}; its shard has {segments} segments and the manifest "
                          f"patch size {patch_size}", REBUILD_HINT)
    layout = _images_layout(S, I, X)
    name, dt, n, off = layout[-1]
    if size != off + n:
        raise FormatError(path, f"truncated or padded: {size} bytes, header implies {off + n}", REBUILD_HINT)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    v = {name: np.frombuffer(mm, dtype=dt, count=n, offset=off) for name, dt, n, off in layout}
    seg, grid, pix = v["segment_image_offsets"], v["image_grid"].reshape(-1, 3), v["image_pixel_offsets"]
    for what, o, end in (("segment_image_offsets", seg, I), ("image_pixel_offsets", pix, X)):
        if o[0] != 0 or o[-1] != end or (np.diff(o) < 0).any():
            raise FormatError(path, f"{what} do not run from 0 to {end} without going back", REBUILD_HINT)
    if I and (grid[:, 0] != 1).any() or (grid[:, 1:] < 1).any():
        raise FormatError(path, "an image grid that is not a still image of positive size (t = 1, h, w >= 1)",
                          REBUILD_HINT)
    want = 3 * grid[:, 1].astype(np.int64) * grid[:, 2] * P * P
    bad = np.flatnonzero(np.diff(pix) != want)
    if bad.size:
        raise FormatError(path, f"image {int(bad[0])}: {int(np.diff(pix)[bad[0]])} pixel bytes for its grid "
                          f"{grid[bad[0]].tolist()} (3 x h*{P} x w*{P})", REBUILD_HINT)
    return ShardImages(path, seg, v["image_grid"], pix, v["pixels"], int(P))


def verify(path: str | Path) -> str:
    """The full check of a shards folder (`packer verify`): the structure (every open's checks), every file's
    sha256 (always hashed) and every token id and mask byte. Returns a one-line summary."""
    ds = ShardSet(path, verify=False)
    check_files(ds.path, ds.manifest)
    for sh in ds.shards:  # whole arrays: one pass over the tokens
        check_values(sh.tokens, sh.loss_mask, ds.vocab_size, sh.path, -1)
        check_pack_sums(sh, np.arange(sh.num_packs))
    if (ds.path / HEADS).read_bytes() != heads_of([sh.path for sh in ds.shards]):  # what streaming readers read
        raise FormatError(str(ds.path / HEADS), "differs from the shards' heads", REBUILD_HINT)
    tokens = int(sum(np.int64(len(s.tokens)) for s in ds.shards))
    return f"{len(ds.shards)} shards, {len(ds):,} packs, {tokens:,} tokens"
