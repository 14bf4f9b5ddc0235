"""`PackedShards`: random access to the packs of a run, as torch tensors, straight from the memory map.

Pack i with segments of lengths [3, 2] (tokens a b c | d e) and loss on b c e gives::

    input_ids     a    b    c    d    e
    position_ids  0    1    2    0    1          restart in every segment
    cu_seqlens    [0, 3, 5]                      int32, segment boundaries
    labels (label_mode="unshifted", for models that shift internally, such as Hugging Face's):
                  -100 b    c    -100 e          the first token of a segment is never a target
    labels (label_mode="shifted", already aligned with the logits):
                  b    c    -100 e    -100       the last token of a segment predicts nothing

Either way no loss crosses a segment boundary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from packer import config as C
from packer import format as fmt
from packer.errors import ConfigError, FormatError
from packer.manifest import MANIFEST, read_manifest, sha256_file
from packer.ranges import within
from packer.shards import FORMAT, VERSION

IGNORE = -100


def resolve(path: str | Path) -> Path:
    """The shards folder: `path` itself, or `path/shards` for a run folder made by `packer pack`."""
    p = Path(path)
    if (p / MANIFEST).is_file() or not (p / "shards" / MANIFEST).is_file():
        return p
    return p / "shards"


def make_labels(ids: np.ndarray, mask: np.ndarray, cu: np.ndarray, label_mode: str) -> np.ndarray:
    """int64 labels for one or more concatenated segments (boundaries `cu`), -100 where no loss.

    `mask` holds 0/1 (uint8). The definition the loader's compiled kernel (packer.collate) is tested
    against; PackedShards items use it directly.
    """
    n = len(ids)
    on = mask.view(np.bool_) if mask.dtype == np.uint8 else mask.astype(bool)
    if label_mode == "unshifted":
        labels = np.where(on, ids, IGNORE)
        labels[cu[:-1][cu[:-1] < n]] = IGNORE  # a segment's first token is never a target
        return labels
    if label_mode == "shifted":
        labels = np.empty(n, dtype=np.int64)
        labels[:-1] = np.where(on[1:], ids[1:], IGNORE)
        labels[cu[1:][cu[1:] > 0] - 1] = IGNORE  # a segment's last token predicts nothing
        return labels
    raise ConfigError(f"label_mode '{label_mode}' is not one of {', '.join(C.LABEL_MODES)}")


def positions(seg_lens: np.ndarray, cu: np.ndarray) -> np.ndarray:
    """int64 position ids restarting at 0 in every segment."""
    return np.arange(int(cu[-1]), dtype=np.int64) - np.repeat(cu[:-1].astype(np.int64, copy=False), seg_lens)


class PackedShards(torch.utils.data.Dataset):
    """The packs of a shards folder (or a run folder), each a dict of torch tensors.

    Items: input_ids int64 [n], labels int64 [n], position_ids int64 [n], cu_seqlens int32 [k+1],
    max_seqlen int, example_index int64 [k] (source record of each segment). n <= pack_len; packs
    are not padded here (the loader pads or flattens batches).
    """

    def __init__(self, path: str | Path, *, label_mode: str = "unshifted", verify: bool = False):
        if label_mode not in C.LABEL_MODES:
            raise ConfigError(f"label_mode '{label_mode}' is not one of {', '.join(C.LABEL_MODES)}")
        self.path = resolve(path)
        self.manifest = read_manifest(self.path, FORMAT, VERSION, "run `packer pack` to build the shards")
        self.label_mode = label_mode
        self.pack_len = int(self.manifest["pack_len"])
        files = self.manifest.get("files", {})
        self.shards: list[fmt.Shard] = []
        for s in self.manifest["shards"]:
            shard_path = self.path / s["file"]
            if verify and files.get(s["file"], {}).get("sha256") != sha256_file(shard_path):
                raise FormatError(str(shard_path), "checksum differs from manifest.json",
                                  "the file is damaged; re-run `packer pack`")
            shard = fmt.open_shard(shard_path)
            if shard.num_packs != s["packs"] or len(shard.tokens) != s["tokens"]:
                raise FormatError(str(shard_path), "counts differ from manifest.json", "re-run `packer pack`")
            self.shards.append(shard)
        self._first = np.concatenate([[0], np.cumsum([s.num_packs for s in self.shards])]).astype(np.int64)
        self._len = int(self._first[-1])
        # Per pack: its shard and index there, as Python lists (the fastest scalar lookup).
        counts = [s.num_packs for s in self.shards]
        self._shard_of = np.repeat(np.arange(len(self.shards)), counts).tolist()
        self._local = within(np.asarray(counts, dtype=np.int64)).tolist()

    def __len__(self) -> int:
        return self._len

    def __getstate__(self) -> dict:
        """Worker processes reopen the memory maps instead of receiving copies of the data."""
        return {"path": str(self.path), "label_mode": self.label_mode}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], label_mode=state["label_mode"])

    def locate(self, i: int) -> tuple[fmt.Shard, int]:
        """The shard holding pack i and the pack's index within it."""
        if not -self._len <= i < self._len:
            raise IndexError(f"pack {i} out of range for {self._len} packs")
        i %= self._len
        return self.shards[self._shard_of[i]], self._local[i]

    def arrays(self, i: int) -> dict[str, np.ndarray]:
        """Pack i as numpy views (tokens, loss_mask, seg_lens, example_index, segment_start): no copy."""
        sh, j = self.locate(i)
        a, b = sh.pack_token_offsets[j], sh.pack_token_offsets[j + 1]
        sa, sb = sh.pack_segment_offsets[j], sh.pack_segment_offsets[j + 1]
        return {"tokens": sh.tokens[a:b], "loss_mask": sh.loss_mask[a:b],
                "seg_lens": sh.segment_lengths[sa:sb], "example_index": sh.segment_example[sa:sb],
                "segment_start": sh.segment_start[sa:sb]}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        v = self.arrays(i)
        ids = v["tokens"].astype(np.int64)
        seg = v["seg_lens"].astype(np.int64)
        cu = np.concatenate([[0], np.cumsum(seg)]).astype(np.int32)
        return {
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(make_labels(ids, v["loss_mask"], cu, self.label_mode)),
            "position_ids": torch.from_numpy(positions(seg, cu)),
            "cu_seqlens": torch.from_numpy(cu),
            "max_seqlen": int(seg.max()) if len(seg) else 0,
            "example_index": torch.from_numpy(v["example_index"].astype(np.int64)),
        }
