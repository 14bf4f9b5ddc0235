"""Stage 3, write: tokenized examples + plan -> shard files and the dataset manifest.

A map over shards: each task gathers its packs' tokens from the memory-mapped Arrow chunks with
whole-array indexing and writes one file through packer.core.formats.shards. The manifest, written last,
lists every shard with its counts and sha256; it is the commit point of the whole run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from packer.core import arrow, config as C
from packer.core.formats import shards as fmt
from packer.core.errors import ConfigError, FormatError
from packer.core.executors import Executor, resolve
from packer.core.manifest import Manifest, commit_stage, current, read_manifest
from packer.core.formats.plan import read_plan
from packer.core.formats.tokenized import FORMAT as TOK_FORMAT, VERSION as TOK_VERSION, open_tokenized, read_columns
from packer.core.progress import progress
from packer.core.ranges import concat_ranges
from packer.core.roles import PROMPT

BLOCK_TOKENS = 1 << 16  # tokens gathered at a time: 320 KB of buffers (uint32 ids + mask, then the token dtype)
FORMAT, VERSION = fmt.FOLDER_FORMAT, fmt.FOLDER_VERSION


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its pieces (row, start, length) in output order and its packs' sizes."""

    index: int
    out: str
    pieces: np.ndarray
    """int64 [S, 3]"""
    segments_per_pack: np.ndarray
    """int64 [P]"""
    pack_len: int
    code: int
    vocab_size: int
    shared_prompt: bool = False
    """The plan's layout is shared-prompt: a piece starting at its row's 0 is the pack's shared prompt."""
    patch_size: int = 0
    """Runs with images: the processor's patch size (0: no images); the shard's images go beside it."""


@dataclass(frozen=True)
class ShardResult:
    file: str
    packs: int
    segments: int
    tokens: int
    loss_tokens: int
    bytes: int
    head_sha256: str


def _batch_layout(ids: pa.ListArray, mask: pa.ListArray, mm, folder: str) -> tuple[np.ndarray, int, int]:
    """One record batch's row offsets (int64 [rows + 1], copied out of the map) and the byte positions in
    its file of input_ids' and loss_mask's element 0, each checked to lie inside the file."""
    base, size = pa.py_buffer(mm).address, len(mm)
    hint = "the tokenized stage is damaged; delete it and re-run `packer pack`"
    if ids.null_count or mask.null_count or ids.values.null_count or mask.values.null_count:
        raise FormatError(folder, "a token column holds nulls, which the tokenized format never has", hint)
    at = []
    for col in (ids, mask):
        values = arrow.to_numpy(col.values)
        pos = values.ctypes.data - base
        if not 0 <= pos <= size - values.nbytes:
            raise FormatError(folder, "a token column lies outside its chunk file", hint)
        at.append(pos)
    off = arrow.to_numpy(ids.offsets).astype(np.int64)  # rows + 1 entries, validated by open_tokenized
    if not np.array_equal(off, arrow.to_numpy(mask.offsets)):
        raise FormatError(folder, "input_ids and loss_mask differ in length", hint)
    return off, at[0], at[1]


class _Source:
    """The tokenized chunks, read piece by piece with pread: memory stays at one block, whatever the data.

    The Arrow files are memory-mapped only to take their metadata (each row's offset, each column's
    position in its file): reading the tokens through the map would fault whole page-cache folios into
    this process (measured ~350 KB per 200-token piece on Linux 6.18, 100 MB a block at 20x GSM8K),
    so every piece is read with os.preadv into the block's buffer instead, from the page cache.
    """

    def __init__(self, folder: str):
        import mmap

        maps: list[mmap.mmap] = []
        manifest, tables = open_tokenized(folder, maps=maps)
        paths = [str(Path(folder) / c["file"]) for c in manifest["chunks"]]
        self._fds = [os.open(p, os.O_RDONLY) for p in paths]
        self._path = dict(zip(self._fds, paths))
        self.offsets: list[np.ndarray] = []  # per record batch: int64 [rows + 1], element offsets
        self.fd: list[int] = []  # per record batch: its chunk file
        self.ids_at: list[int] = []  # per record batch: byte position in the file of input_ids' element 0
        self.mask_at: list[int] = []  # likewise for loss_mask
        self._copy_metadata(tables, maps, folder)
        del tables  # no view of a map may outlive it: close() below refuses otherwise
        for mm in maps:  # the metadata is copied out: drop the mapped pages, close the maps
            mm.madvise(mmap.MADV_DONTNEED)
            mm.close()

    def _copy_metadata(self, tables: list[pa.Table], maps: list, folder: str) -> None:
        """Per record batch: row offsets, file, byte positions of its columns; and every row's example."""
        rows, examples, roles = [0], [], []
        for t, mm, fd in zip(tables, maps, self._fds):
            for ids, mask, index, role in zip(t.column("input_ids").chunks, t.column("loss_mask").chunks,
                                              t.column("example_index").chunks, t.column("role").chunks):
                off, ids_at, mask_at = _batch_layout(ids, mask, mm, folder)
                self.offsets.append(off)
                self.ids_at.append(ids_at)
                self.mask_at.append(mask_at)
                self.fd.append(fd)
                rows.append(rows[-1] + len(ids))
                if index.null_count or role.null_count:
                    raise FormatError(folder, "example_index or role holds nulls, which the tokenized format never "
                                      "has", "the tokenized stage is damaged; delete it and re-run `packer pack`")
                examples.append(arrow.to_numpy(index).copy())
                roles.append(arrow.to_numpy(role).copy())
        self.row_starts = np.asarray(rows, dtype=np.int64)
        self.example_index = np.concatenate(examples) if examples else np.zeros(0, np.int64)
        self.role = np.concatenate(roles).astype(np.uint8) if roles else np.zeros(0, np.uint8)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def gather(self, pieces: np.ndarray, code: int, which: str = "both") -> tuple[np.ndarray, np.ndarray]:
        """Tokens and loss mask of the pieces (int64 [S, 3]: row, start, length), concatenated in the
        given order (which: "tokens" or "mask" reads only that one; the other comes back empty)."""
        row, start, length = pieces[:, 0], pieces[:, 1], pieces[:, 2]
        total = int(length.sum())
        out_start = np.cumsum(length) - length
        batch = np.searchsorted(self.row_starts, row, side="right") - 1
        elem = np.empty(len(pieces), dtype=np.int64)  # each piece's first element in its batch's values
        fd = np.empty(len(pieces), dtype=np.int64)
        ids_at = np.empty(len(pieces), dtype=np.int64)
        mask_at = np.empty(len(pieces), dtype=np.int64)
        by_batch = np.argsort(batch, kind="stable")
        # One step per record batch touched (at most a few hundred a block), each whole-array.
        for sel in np.split(by_batch, np.flatnonzero(np.diff(batch[by_batch])) + 1):
            if len(sel):
                c = int(batch[sel[0]])
                elem[sel] = self.offsets[c][row[sel] - self.row_starts[c]] + start[sel]
                fd[sel], ids_at[sel], mask_at[sel] = self.fd[c], self.ids_at[c], self.mask_at[c]
        ids = np.empty(total if which != "mask" else 0, dtype=np.uint32)
        mask = np.empty(total if which != "tokens" else 0, dtype=np.uint8)
        order = np.lexsort((elem, fd))  # file order: sequential reads where pieces are neighbours
        jobs = []
        if which != "mask":
            jobs.append((memoryview(ids.view(np.uint8)), ids_at + elem * 4, 4))
        if which != "tokens":
            jobs.append((memoryview(mask), mask_at + elem, 1))
        for buf, pos, size in jobs:
            args = zip(fd[order].tolist(), pos[order].tolist(), out_start[order].tolist(), length[order].tolist())
            # One pread per piece (a few hundred a block, ~1 us each): see the class docstring for why not the map.
            for f, p, o, n in args:
                if os.preadv(f, [buf[o * size:(o + n) * size]], p) != n * size:
                    raise FormatError(self._path[f], "the chunk ended before a piece of the plan",
                                      "the tokenized stage is damaged; delete it and re-run `packer pack`")
        if which != "mask" and fmt.TOKEN_DTYPES[code] != ids.dtype:
            ids = ids.astype(fmt.TOKEN_DTYPES[code])
        return ids, mask


_SOURCE: _Source | None = None
_IMAGES: dict = {}


def _init_worker(folder: str) -> None:
    global _SOURCE
    _SOURCE = _Source(folder)
    _IMAGES.clear()
    _IMAGES["folder"] = folder


def _row_images(rows: np.ndarray) -> list[list[tuple[bytes, tuple[int, int, int]]]]:
    """Runs with images: each tokenized row's images as (pixel bytes, grid), read from its chunk."""
    if "tables" not in _IMAGES:
        _, tables = open_tokenized(_IMAGES["folder"], verify=False)  # checked by the stage before the map
        _IMAGES["tables"] = tables
        _IMAGES["starts"] = np.concatenate([[0], np.cumsum([t.num_rows for t in tables])]).astype(np.int64)
    tables, starts = _IMAGES["tables"], _IMAGES["starts"]
    out = []
    for r in rows.tolist():
        t = int(np.searchsorted(starts, r, side="right") - 1)
        grid = tables[t].column("image_grid")[r - int(starts[t])].as_py() or []
        pixels = tables[t].column("image_pixels")[r - int(starts[t])].as_py() or []
        out.append([(px, tuple(grid[3 * k:3 * k + 3])) for k, px in enumerate(pixels)])
    return out


def write_one(task: ShardTask) -> ShardResult:
    """Map step: gather and write one shard file."""
    src = _SOURCE
    if src is None:
        raise ConfigError("the executor ran write_one without its initializer: an executor must call "
                          "initializer(*initargs) in each process before fn (see packer.core.executors)")
    seg_len = task.pieces[:, 2]
    cum = np.cumsum(seg_len)
    # Blocks of about BLOCK_TOKENS: the shard is gathered and written a block at a time, tokens then
    # mask, and the pages read are dropped after each block, so memory stays flat as the data grows.
    cuts = np.unique(np.concatenate([[0], np.searchsorted(cum, np.arange(BLOCK_TOKENS, int(cum[-1]) if len(cum)
                                                                                   else 0, BLOCK_TOKENS)), [len(cum)]]))
    loss = [0]

    def blocks(which: str):
        for a, b in zip(cuts[:-1], cuts[1:]):
            tokens, mask = src.gather(task.pieces[a:b], task.code, which)
            if which == "tokens" and tokens.size and int(tokens.max()) >= task.vocab_size:
                raise FormatError(task.out, f"token id {int(tokens.max())} is not below the tokenizer's vocabulary "
                                  f"size {task.vocab_size}", "the tokenized stage is damaged; delete it and re-run "
                                  "`packer pack`")  # never write what a reader would refuse
            if which == "mask":
                loss[0] += int(mask.sum(dtype=np.int64))
            yield tokens if which == "tokens" else mask

    role = src.role[task.pieces[:, 0]].copy()
    if task.shared_prompt:
        role[task.pieces[:, 1] == 0] = PROMPT
    seg_off = np.concatenate([[0], np.cumsum(task.segments_per_pack)])
    tok_off = np.concatenate([[0], cum])[seg_off]
    name = fmt.shard_name(task.index)
    total = int(cum[-1]) if len(cum) else 0
    size = fmt.write_shard(
        Path(task.out) / name, pack_len=task.pack_len, code=task.code, tokens=blocks("tokens"),
        loss_mask=blocks("mask"), num_tokens=total, pack_token_offsets=tok_off, pack_segment_offsets=seg_off,
        segment_lengths=seg_len, segment_example=src.example_index[task.pieces[:, 0]],
        segment_start=task.pieces[:, 1], segment_role=role)
    if task.patch_size:  # a piece of a row with images is always the whole row (the plan never cuts them)
        fmt.write_images(Path(task.out) / fmt.images_name(task.index), _row_images(task.pieces[:, 0]), task.patch_size)
    return ShardResult(name, len(task.segments_per_pack), len(seg_len), total, loss[0], size,
                       fmt.head_sha256(Path(task.out) / name))


def _split_shards(pack_bytes: np.ndarray, limit: int) -> np.ndarray:
    """Greedy shard boundaries (pack indices, with 0 and P) keeping each shard under `limit` bytes."""
    cs = np.cumsum(pack_bytes)
    bounds = [0]
    # One iteration per shard.
    while bounds[-1] < len(pack_bytes):
        i = bounds[-1]
        base = cs[i - 1] if i else 0
        j = int(np.searchsorted(cs, base + limit, side="right"))
        bounds.append(max(j, i + 1))
    return np.asarray(bounds, dtype=np.int64)


def _check_shared_prompts(tokenized: str, pieces: np.ndarray, code: int) -> None:
    """In the shared-prompt layout the prompt is stored once, taken from the chosen row: refuse a pair whose
    rejected row starts with other tokens (a template that renders the prompt differently before each reply),
    which would train the rejected reply on a prompt it never followed."""
    src = _Source(tokenized)
    try:
        units = pieces.reshape(-1, 3, 3)
        prompt = units[:, 0, :]  # (chosen row, 0, P)
        other = np.stack([units[:, 2, 0], prompt[:, 1], prompt[:, 2]], axis=1)  # (rejected row, 0, P)
        for a in range(0, len(units), 4096):
            x, _ = src.gather(prompt[a:a + 4096], code, "tokens")
            y, _ = src.gather(other[a:a + 4096], code, "tokens")
            if not np.array_equal(x, y):
                lens = prompt[a:a + 4096, 2]
                ends = np.cumsum(lens)
                bad = int(np.searchsorted(ends, int(np.flatnonzero(x != y)[0]), side="right"))
                record = int(src.example_index[prompt[a + bad, 0]])
                raise FormatError(tokenized, f"preference record {record}: its rejected reply follows other prompt "
                                  "tokens than its chosen reply", "use --layout pairs for this data")
    finally:
        src.close()


def _check_pieces(tokenized: Path, pieces: np.ndarray) -> None:
    """Every piece of the plan lies inside its tokenized example (the gather never reads out of bounds)."""
    lengths = read_columns(tokenized, ["length"])["length"]
    row, end = pieces[:, 0], pieces[:, 1] + pieces[:, 2]
    if len(pieces) and (int(row.max()) >= len(lengths) or bool(np.any(end > lengths[np.minimum(row, len(lengths) - 1)]))):
        raise FormatError(str(tokenized), "the plan names tokens these tokenized chunks do not have",
                          "the plan and tokenized stages do not belong together; re-run `packer pack`")


def write_stage(tokenized: str | Path, plan_dir: str | Path, out: str | Path, config: C.WriteConfig,
                *, executor: Executor | str | None = None, workers: int = 0, rehash: bool = False,
                rebuild: bool = False) -> Manifest:
    """Stage 3: write the shards of `plan_dir` into the folder `out`; returns the dataset manifest.

    The tokenized and plan folders are checked before use (seals, every file's sha256 once per run, the
    plan's structure, and that the plan was made from these tokenized examples). rebuild: write the
    shards even when the existing ones are up to date (an upstream stage was repaired)."""
    run = resolve(executor, workers)
    tok_manifest = read_manifest(Path(tokenized), TOK_FORMAT, TOK_VERSION, "run `packer pack` again")
    plan_manifest, pieces, order, offsets = read_plan(plan_dir)
    if plan_manifest.get("input_digest") != tok_manifest.get("digest"):
        raise FormatError(str(plan_dir), f"this plan was made from another tokenized stage than {tokenized}",
                          "re-run `packer plan` (or `packer pack`)")
    digest = C.digest({"stage": "write", "version": VERSION, "format_version": fmt.VERSION,
                       "config": C.to_dict(config), "tokenized": tok_manifest["digest"],
                       "plan": plan_manifest["digest"]})
    existing = None if rebuild else current(Path(out), FORMAT, VERSION, digest, rehash=rehash)
    if existing is not None:
        return existing
    pack_len = plan_manifest["config"]["pack_len"]
    code = fmt.token_dtype_code(tok_manifest["tokenizer"]["vocab_size"])
    _check_pieces(Path(tokenized), pieces)
    shared = plan_manifest["config"].get("layout") == "shared-prompt"
    if shared:
        _check_shared_prompts(str(tokenized), pieces, code)
    num_packs = len(offsets) - 1
    perm = (np.random.default_rng(config.seed).permutation(num_packs) if config.shuffle
            else np.arange(num_packs))
    sizes = np.diff(offsets)[perm]
    seq = pieces[order[concat_ranges(offsets[:-1][perm], sizes)]]  # pieces in output order
    seg_off = np.concatenate([[0], np.cumsum(sizes)])
    pack_tokens = np.add.reduceat(seq[:, 2], seg_off[:-1]) if num_packs else np.zeros(0, np.int64)
    pack_bytes = fmt.pack_bytes(code, pack_tokens, sizes)
    bounds = _split_shards(pack_bytes, config.shard_bytes - fmt.SHARD_OVERHEAD)

    images = tok_manifest.get("images")
    patch = int(images["meta"]["patch_size"]) if isinstance(images, dict) else 0

    def build(tmp: Path) -> dict:
        vocab = int(tok_manifest["tokenizer"]["vocab_size"])
        tasks = (ShardTask(i, str(tmp), seq[seg_off[a]:seg_off[b]], sizes[a:b], pack_len, code, vocab, shared, patch)
                 for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])))
        results = list(progress(run.map(write_one, tasks, _init_worker, (str(tokenized),)),
                                "write", total=len(bounds) - 1, unit="shard"))
        tokens = sum(r.tokens for r in results)
        (tmp / fmt.HEADS).write_bytes(fmt.heads_of([tmp / r.file for r in results]))
        return {
            "format": FORMAT, "version": VERSION, "shard_format_version": fmt.VERSION, "digest": digest,
            "pack_len": pack_len, "token_dtype": str(fmt.TOKEN_DTYPES[code].name),
            "tokenizer": tok_manifest["tokenizer"], "inputs": tok_manifest["inputs"],
            "sources": [dict(src, weight=w) for src, w in zip(
                tok_manifest.get("sources", []),
                plan_manifest["config"].get("weights") or [1.0] * len(tok_manifest.get("sources", [])))],
            "config": {"tokenize": tok_manifest["config"], "plan": plan_manifest["config"],
                       "write": C.to_dict(config)},
            "lineage": {"tokenized": tok_manifest["digest"], "plan": plan_manifest["digest"]},
            "plan": plan_manifest["plan"],
            "counts": {
                "packs": num_packs, "segments": len(seq), "tokens": tokens,
                "loss_tokens": sum(r.loss_tokens for r in results),
                "efficiency": tokens / max(1, num_packs * pack_len),
                "records": tok_manifest["counts"]["records"],
                "skipped_records": tok_manifest["counts"]["skipped"],
                "skipped_by_reason": tok_manifest["counts"]["skipped_by_reason"],
                **{k: v for k, v in plan_manifest["counts"].items() if k not in ("packs", "tokens")},
            },
            "shards": [{"file": r.file, "packs": r.packs, "segments": r.segments, "tokens": r.tokens,
                        "bytes": r.bytes, "head_sha256": r.head_sha256} for r in results],
            **({"images": images} if images else {}),
        }

    return commit_stage(Path(out), build)
