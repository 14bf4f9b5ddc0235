"""Stage 3, write: tokenized examples + plan -> shard files and the dataset manifest.

A map over shards: each task gathers its packs' tokens from the memory-mapped Arrow chunks with
whole-array indexing and writes one file through packer.format. The manifest, written last,
lists every shard with its counts and sha256; it is the commit point of the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from packer import config as C
from packer import format as fmt
from packer.errors import FormatError
from packer.executor import map_ordered
from packer.manifest import commit_stage, current, read_manifest
from packer.progress import progress
from packer.ranges import concat_ranges

BLOCK_TOKENS = 1 << 16  # tokens gathered at a time: each touched page maps 64 KB around it (fault-around), ~20 MB a block
FORMAT = "packer-shards"
VERSION = 2  # 2: manifests carry manifest_sha256; readers check structure on every open


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


@dataclass(frozen=True)
class ShardResult:
    file: str
    packs: int
    segments: int
    tokens: int
    loss_tokens: int
    bytes: int


class _Source:
    """The tokenized chunks as flat numpy arrays: zero-copy views of the memory-mapped Arrow files.

    One entry per Arrow record batch, taken as it lies in the map (no combine_chunks copy), so a
    writer process holds pages of the data, not a copy of it, and memory does not grow with the data.
    """

    def __init__(self, folder: str):
        from packer.tokenization import open_tokenized

        self._maps: list = []
        _, tables = open_tokenized(folder, maps=self._maps)
        self.ids, self.mask, self.offsets = [], [], []
        rows = [0]
        examples = []
        for t in tables:
            for ids, mask, index in zip(t.column("input_ids").chunks, t.column("loss_mask").chunks,
                                        t.column("example_index").chunks):
                self.ids.append(ids.values.to_numpy(zero_copy_only=True))
                self.mask.append(mask.values.to_numpy(zero_copy_only=True))
                self.offsets.append(ids.offsets.to_numpy().astype(np.int64))  # rows + 1 entries
                rows.append(rows[-1] + len(ids))
                examples.append(index.to_numpy())
        self.row_starts = np.asarray(rows, dtype=np.int64)
        self.example_index = np.concatenate(examples) if examples else np.zeros(0, np.int64)

    def release(self) -> None:
        """Drop the mapped pages read so far (clean file pages: re-read on the next access), so the
        process's memory stays at one block, whatever the size of the data."""
        import mmap

        for mm in self._maps:
            mm.madvise(mmap.MADV_DONTNEED)

    def gather(self, pieces: np.ndarray, code: int, which: str = "both") -> tuple[np.ndarray, np.ndarray]:
        """Tokens and loss mask of the pieces, concatenated in the given order (which: "tokens" or
        "mask" gathers only that one; the other comes back empty)."""
        row, start, length = pieces[:, 0], pieces[:, 1], pieces[:, 2]
        total = int(length.sum())
        tokens = np.empty(total if which != "mask" else 0, dtype=fmt.TOKEN_DTYPES[code])
        mask = np.empty(total if which != "tokens" else 0, dtype=np.uint8)
        out_start = np.cumsum(length) - length
        chunk = np.searchsorted(self.row_starts, row, side="right") - 1
        by_chunk = np.argsort(chunk, kind="stable")
        bounds = np.flatnonzero(np.diff(chunk[by_chunk])) + 1
        # One iteration per Arrow chunk touched (thousands at most), each a whole-array gather.
        for sel in np.split(by_chunk, bounds):
            if not len(sel):
                continue
            c = int(chunk[sel[0]])
            lens = length[sel]
            src = concat_ranges(self.offsets[c][row[sel] - self.row_starts[c]] + start[sel], lens)
            dst = concat_ranges(out_start[sel], lens)
            if which != "mask":
                tokens[dst] = self.ids[c][src]
            if which != "tokens":
                mask[dst] = self.mask[c][src]
        return tokens, mask


_SOURCE: _Source | None = None


def _init_worker(folder: str) -> None:
    global _SOURCE
    _SOURCE = _Source(folder)


def write_one(task: ShardTask) -> ShardResult:
    """Map step: gather and write one shard file."""
    src = _SOURCE
    assert src is not None  # set by _init_worker
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
            src.release()

    seg_off = np.concatenate([[0], np.cumsum(task.segments_per_pack)])
    tok_off = np.concatenate([[0], cum])[seg_off]
    name = shard_name(task.index)
    total = int(cum[-1]) if len(cum) else 0
    size = fmt.write_shard(
        Path(task.out) / name, pack_len=task.pack_len, code=task.code, tokens=blocks("tokens"),
        loss_mask=blocks("mask"), num_tokens=total, pack_token_offsets=tok_off, pack_segment_offsets=seg_off,
        segment_lengths=seg_len, segment_example=src.example_index[task.pieces[:, 0]],
        segment_start=task.pieces[:, 1])
    return ShardResult(name, len(task.segments_per_pack), len(seg_len), total, loss[0], size)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


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


def _check_pieces(tokenized: Path, pieces: np.ndarray, tok_manifest: dict) -> None:
    """Every piece of the plan lies inside its tokenized example (the gather never reads out of bounds)."""
    from packer.tokenization import open_tokenized

    _, tables = open_tokenized(tokenized)
    lengths = np.concatenate([t.column("length").to_numpy() for t in tables]).astype(np.int64) if tables \
        else np.zeros(0, np.int64)
    if len(pieces) and (int(pieces[:, 0].max()) >= len(lengths) or
                        bool(np.any(pieces[:, 1] + pieces[:, 2] > lengths[np.minimum(pieces[:, 0], len(lengths) - 1)]))):
        raise FormatError(str(tokenized), "the plan names tokens these tokenized chunks do not have",
                          "the plan and tokenized stages do not belong together; re-run `packer pack`")


def write_stage(tokenized: str | Path, plan_dir: str | Path, out: str | Path, config: C.WriteConfig,
                *, workers: int = 0, rehash: bool = False) -> dict:
    """Stage 3: write the shards of `plan_dir` into the folder `out`; returns the dataset manifest."""
    from packer.planner import read_plan
    from packer.tokenization import FORMAT as TOK_FORMAT, VERSION as TOK_VERSION

    tok_manifest = read_manifest(Path(tokenized), TOK_FORMAT, TOK_VERSION, "run `packer pack` again")
    plan_manifest, pieces, order, offsets = read_plan(plan_dir)
    digest = C.digest({"stage": "write", "version": VERSION, "format_version": fmt.VERSION,
                       "config": C.to_dict(config), "tokenized": tok_manifest["digest"],
                       "plan": plan_manifest["digest"]})
    existing = current(Path(out), FORMAT, VERSION, digest, rehash=rehash)
    if existing is not None:
        return existing
    pack_len = plan_manifest["config"]["pack_len"]
    code = fmt.token_dtype_code(tok_manifest["tokenizer"]["vocab_size"])
    _check_pieces(Path(tokenized), pieces, tok_manifest)
    num_packs = len(offsets) - 1
    perm = (np.random.default_rng(config.seed).permutation(num_packs) if config.shuffle
            else np.arange(num_packs))
    sizes = np.diff(offsets)[perm]
    seq = pieces[order[concat_ranges(offsets[:-1][perm], sizes)]]  # pieces in output order
    seg_off = np.concatenate([[0], np.cumsum(sizes)])
    pack_tokens = np.add.reduceat(seq[:, 2], seg_off[:-1]) if num_packs else np.zeros(0, np.int64)
    itemsize = fmt.TOKEN_DTYPES[code].itemsize
    pack_bytes = pack_tokens * (itemsize + 1) + sizes * 16 + 16
    bounds = _split_shards(pack_bytes, config.shard_bytes)

    def build(tmp: Path) -> dict:
        vocab = int(tok_manifest["tokenizer"]["vocab_size"])
        tasks = (ShardTask(i, str(tmp), seq[seg_off[a]:seg_off[b]], sizes[a:b], pack_len, code, vocab)
                 for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])))
        results = list(progress(map_ordered(write_one, tasks, workers, _init_worker, (str(tokenized),)),
                                "write", total=len(bounds) - 1, unit="shard"))
        tokens = sum(r.tokens for r in results)
        return {
            "format": FORMAT, "version": VERSION, "shard_format_version": fmt.VERSION, "digest": digest,
            "pack_len": pack_len, "token_dtype": str(fmt.TOKEN_DTYPES[code].name),
            "tokenizer": tok_manifest["tokenizer"], "inputs": tok_manifest["inputs"],
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
                        "bytes": r.bytes} for r in results],
        }

    return commit_stage(Path(out), build)
