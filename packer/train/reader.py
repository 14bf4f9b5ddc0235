"""`PackedShards`: random access to the packs of a run, as torch tensors, straight from the memory map.

Pack i with segments of lengths [3, 2] (tokens a b c | d e) and loss on b c e gives::

    input_ids     a    b    c    d    e
    position_ids  0    1    2    0    1          restart in every segment
    cu_seqlens    [0, 3, 5]                      int32, segment boundaries
    labels        -100 b    c    -100 e          label_mode="unshifted" (packer.core.labels has "shifted")

The folder is opened and checked by packer.core.formats.shards.ShardSet; labels and positions come from
packer.core.labels. This module only turns a pack into tensors.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from packer.core.labels import check_label_mode, make_labels, positions
from packer.core.context_parallel import padded_lengths
from packer.core.formats.shards import ShardSet, check_values
from packer.core.rangestore import DEFAULT_CACHE_LIMIT, RangeReader, RemoteRun
from packer.core.storage import is_url


class PackedShards(ShardSet, torch.utils.data.Dataset):
    """The packs of a shards folder (or a run folder), each a dict of torch tensors.

    Items: input_ids int64 [n], labels int64 [n], position_ids int64 [n], cu_seqlens int32 [k+1],
    max_seqlen int, example_index int64 [k] (source record of each segment). n <= pack_len; packs
    are not padded here (the loader pads or flattens batches).
    """

    def __init__(self, path: str | Path, *, label_mode: str = "unshifted", verify: bool = True,
                 cache_limit: int | None = DEFAULT_CACHE_LIMIT):
        """Open and validate a shards (or run) folder (see ShardSet: structure on every open, each
        file's sha256 once per run with verify=True, the default).

        A URL (s3://, gs://, any fsspec URL) of a run committed with `packer pack --out URL` is read by byte
        range (packer.core.rangestore): the shards' heads once, checked against the manifest, then each pack
        as it is read, checked against its checksums, keeping at most `cache_limit` bytes of packs in the
        local cache (None: no limit). Remote packs are always checked, whatever `verify` says."""
        check_label_mode(label_mode)
        self.label_mode = label_mode
        self.url = str(path) if isinstance(path, str) and is_url(path) else None
        self.cache_limit = cache_limit
        remote = RemoteRun(self.url, cache_limit) if self.url else None
        super().__init__(remote.folder if remote else path, verify=verify and remote is None)
        if remote is not None:
            self.ranges = RangeReader(remote, self.shards)
            largest = int(self.ranges.pack_bytes.max()) if len(self.ranges.pack_bytes) else 0
            self.ranges.need(largest, "the largest pack")

    def __getstate__(self) -> dict:
        """Worker processes reopen the memory maps (or the URL) instead of receiving copies of the data."""
        return {"path": self.url or str(self.path), "label_mode": self.label_mode, "cache_limit": self.cache_limit}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], label_mode=state["label_mode"], verify=False,  # the parent verified
                      cache_limit=state.get("cache_limit", DEFAULT_CACHE_LIMIT))

    def own(self) -> bool:
        """In a process other than the one that opened a remote run (a forked DataLoader worker), open the URL
        again here: its own cache, its own store client (the parent's cache copies are the parent's to evict).
        Returns True when it did (the memory maps changed)."""
        if self.ranges is None or self.ranges.pid == os.getpid():
            return False
        self.__setstate__(self.__getstate__())
        return True

    def reading(self, packs):
        self.own()
        return super().reading(packs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        with self.reading([i]):
            return self._item(i)

    def _item(self, i: int) -> dict[str, torch.Tensor | int]:
        v = self.arrays(i)
        check_values(v["tokens"], v["loss_mask"], self.vocab_size, self.locate(i)[0].path, i)
        ids = v["tokens"].astype(np.int64)
        seg = v["seg_lens"].astype(np.int64)
        cu = np.concatenate([[0], np.cumsum(seg)]).astype(np.int32)
        item = {
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(make_labels(ids, v["loss_mask"], cu, self.label_mode)),
            "position_ids": torch.from_numpy(positions(seg, cu)),
            "cu_seqlens": torch.from_numpy(cu),
            "max_seqlen": int(seg.max()) if len(seg) else 0,
            "example_index": torch.from_numpy(v["example_index"].astype(np.int64)),
        }
        if self.cp_size > 1:  # planned for context parallelism: where each segment sits once padded
            pad = padded_lengths(seg, self.cp_size)
            item["cu_seqlens_padded"] = torch.from_numpy(np.concatenate([[0], np.cumsum(pad)]).astype(np.int32))
        if self.images_meta is not None:  # runs with images: the pack's images and its [4, n] positions
            from packer.core.errors import REBUILD_HINT, FormatError
            from packer.core.vision import PlaceholderError
            from packer.train.vision import packed_inputs

            grids, pixels = self.images_of(i)
            try:
                vis = packed_inputs(item["input_ids"], item["cu_seqlens"], pixels, grids, self.image_meta(),
                                    int(self.images_meta["image_token_id"]))
            except PlaceholderError as e:
                raise FormatError(str(self.path), f"pack {i}: its image placeholders do not match its images ({e})",
                                  REBUILD_HINT) from None
            item.update(vis)  # Qwen-VL: position_ids [4, n] replace the 1-D ones, and the grids; LLaVA: pixels only
        return item

    def image_meta(self):
        """Runs with images: what turns stored pixels into pixel values (packer.core.vision.ImageMeta)."""
        from packer.core.vision import ImageMeta

        m = self.images_meta["meta"]
        return ImageMeta(**{**m, "image_mean": tuple(m["image_mean"]), "image_std": tuple(m["image_std"])})
