"""Megatron-Core indexed datasets (`.bin` + `.idx`, the MMIDIDX layout that megatron-core's
IndexedDataset reads): one sequence and one document per pack, in three parallel datasets.

    packed.bin / .idx              token ids (uint16 when the vocabulary fits, else int32)
    packed_loss_mask.bin / .idx    uint8 per token, 1 where the token is a training target
    packed_cu_seqlens.bin / .idx   int32 per pack: 0, then the end of each packed example (document
                                   boundaries inside the pack: attention and positions restart there)

Sequence i of every dataset is pack i, so `IndexedDataset("OUT/packed")[i]`, `..._loss_mask")[i]` and
`..._cu_seqlens")[i]` line up. The .idx layout written here (header b"MMIDIDX\\x00\\x00", version 1,
dtype code, sequence and document counts, int32 lengths, int64 byte pointers, int64 document indices
starting at 0) is checked in tests by megatron-core's own reader.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from packer.exports._packs import shard_arrays
from packer.core.formats.shards import ShardSet

HEADER = b"MMIDIDX\x00\x00"
CODES = {np.dtype(np.uint8): 1, np.dtype(np.int32): 4, np.dtype(np.int64): 5, np.dtype(np.uint16): 8}
PREFIX = "packed"


class _Dataset:
    """One .bin written pack by pack, and its .idx at the end."""

    def __init__(self, prefix: Path, dtype: np.dtype):
        self.prefix, self.dtype = prefix, np.dtype(dtype)
        self.bin = open(prefix.with_suffix(".bin"), "wb")
        self.lengths: list[np.ndarray] = []

    def add(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        """Sequences flat[offsets[k]:offsets[k+1]], one per pack."""
        self.bin.write(np.ascontiguousarray(flat, dtype=self.dtype).tobytes())
        self.lengths.append(np.diff(offsets).astype(np.int32))

    def close(self) -> int:
        self.bin.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int32)
        pointers = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) * self.dtype.itemsize)[:-1]]) \
            if len(lengths) else np.zeros(0, np.int64)
        documents = np.arange(len(lengths) + 1, dtype=np.int64)  # one document per pack
        with open(self.prefix.with_suffix(".idx"), "wb") as f:
            f.write(HEADER + struct.pack("<Q", 1) + struct.pack("<B", CODES[self.dtype]))
            f.write(struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(documents)))
            f.write(lengths.tobytes() + pointers.astype(np.int64).tobytes() + documents.tobytes())
        return len(lengths)


def write(shards: ShardSet, tmp: Path, dtype: str | None) -> dict:
    token_dtype = np.dtype(dtype or ("uint16" if shards.vocab_size <= 2**16 else "int32"))
    if token_dtype == np.int64:
        token_dtype = np.dtype(np.int32)  # Megatron's token datasets are uint16 or int32; int64 only wastes space
    tokens = _Dataset(tmp / PREFIX, token_dtype)
    mask = _Dataset(tmp / f"{PREFIX}_loss_mask", np.uint8)
    cu = _Dataset(tmp / f"{PREFIX}_cu_seqlens", np.int32)
    for a in shard_arrays(shards):
        tokens.add(a.tokens, a.pack_offsets)
        mask.add(a.loss_mask, a.pack_offsets)
        cu.add(*a.cu_seqlens())
    packs = tokens.close()
    mask.close()
    cu.close()
    return {"packs": packs, "token_dtype": str(token_dtype),
            "files": sorted(p.name for p in tmp.iterdir()),
            "prefixes": {"tokens": PREFIX, "loss_mask": f"{PREFIX}_loss_mask", "cu_seqlens": f"{PREFIX}_cu_seqlens"}}
