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

from pathlib import Path

import numpy as np
import torch

from packer.core.labels import check_label_mode, make_labels, positions
from packer.core.context_parallel import padded_lengths
from packer.core.formats.shards import ShardSet, check_values
from packer.core.runstore import local_run


class PackedShards(ShardSet, torch.utils.data.Dataset):
    """The packs of a shards folder (or a run folder), each a dict of torch tensors.

    Items: input_ids int64 [n], labels int64 [n], position_ids int64 [n], cu_seqlens int32 [k+1],
    max_seqlen int, example_index int64 [k] (source record of each segment). n <= pack_len; packs
    are not padded here (the loader pads or flattens batches).
    """

    def __init__(self, path: str | Path, *, label_mode: str = "unshifted", verify: bool = True):
        """Open and validate a shards (or run) folder (see ShardSet: structure on every open, each
        file's sha256 once per run with verify=True, the default)."""
        check_label_mode(label_mode)
        self.label_mode = label_mode
        super().__init__(local_run(path), verify=verify)  # a URL: the committed run, fetched into the cache

    def __getstate__(self) -> dict:
        """Worker processes reopen the memory maps instead of receiving copies of the data."""
        return {"path": str(self.path), "label_mode": self.label_mode}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], label_mode=state["label_mode"], verify=False)  # the parent verified

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
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
        return item
