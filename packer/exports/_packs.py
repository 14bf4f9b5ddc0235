"""Whole-shard arrays shared by the exports: labels, positions and per-pack cu_seqlens, vectorized."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from packer.core.labels import make_labels, positions
from packer.core.formats.shards import ShardSet


@dataclass
class ShardArrays:
    """One shard's packs back to back: token arrays [T], per-pack offsets [P+1] into them, segment
    lengths [S] and per-pack offsets [P+1] into those."""

    tokens: np.ndarray
    loss_mask: np.ndarray
    labels: np.ndarray
    """int64, unshifted (labels[i] = tokens[i] where trained; -100 at a segment's first token)."""
    positions: np.ndarray
    pack_offsets: np.ndarray
    seg_lens: np.ndarray
    seg_offsets: np.ndarray
    example_index: np.ndarray

    def cu_seqlens(self) -> tuple[np.ndarray, np.ndarray]:
        """Per pack, its cu_seqlens (0, ..., pack tokens) back to back as int32, and offsets [P+1] into them."""
        packs = len(self.pack_offsets) - 1
        cs = np.concatenate([[0], np.cumsum(self.seg_lens)])
        ends = cs[1:] - np.repeat(cs[self.seg_offsets[:-1]], np.diff(self.seg_offsets))  # each segment's end in its pack
        out = np.zeros(len(self.seg_lens) + packs, dtype=np.int32)
        starts = self.seg_offsets[:-1] + np.arange(packs)  # where pack p's leading 0 goes
        rest = np.ones(len(out), dtype=bool)
        rest[starts] = False
        out[rest] = ends
        return out, np.concatenate([starts, [len(out)]]).astype(np.int64)


def list_array(flat: np.ndarray, offsets: np.ndarray, value: pa.DataType) -> pa.Array:
    """A list<value> Arrow array whose row k is flat[offsets[k]:offsets[k+1]]."""
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat, type=value))


def shard_arrays(shards: ShardSet) -> Iterator[ShardArrays]:
    """Each shard's arrays, one shard in memory at a time."""
    for sh in shards.shards:
        tokens = np.asarray(sh.tokens)
        seg_lens = np.asarray(sh.segment_lengths, dtype=np.int64)
        cu = np.concatenate([[0], np.cumsum(seg_lens)])
        yield ShardArrays(tokens, np.asarray(sh.loss_mask), make_labels(tokens.astype(np.int64), np.asarray(sh.loss_mask), cu,
                                                                         "unshifted"),
                          positions(seg_lens, cu), np.asarray(sh.pack_token_offsets, dtype=np.int64), seg_lens,
                          np.asarray(sh.pack_segment_offsets, dtype=np.int64), np.asarray(sh.segment_example))
