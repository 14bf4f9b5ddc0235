"""The plan format (stage 2's output): which tokens of which examples go into each pack.

A plan folder holds three numpy arrays (.npy, saved without pickles) and manifest.json
(packer.core.manifest):

    pieces.npy   int64 [n, 3]   (row, start, length): tokens [start, start+length) of tokenized row
    order.npy    int64 [n]      piece indices, pack by pack
    offsets.npy  int64 [P + 1]  pack p holds order[offsets[p]:offsets[p+1]]

Example, two examples of 5 and 3 tokens at pack_len 4 with --overlong split (the first cut in two)::

    pieces  = [[0, 0, 4], [0, 4, 1], [1, 0, 3]]
    order   = [0, 2, 1]                           pack 0: piece 0; pack 1: pieces 2, 1
    offsets = [0, 1, 3]

The one module that writes (write_plan) and reads (read_plan) it; docs/FORMAT.md is its specification.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from packer.core.errors import FormatError
from packer.core.manifest import read_manifest

FORMAT = "packer-plan"
VERSION = 3  # 2: manifests carry manifest_sha256; 3: mixture weights (a row may repeat), deterministic solver


def read_plan(folder: str | Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(manifest, pieces, order, offsets) of a plan folder."""
    folder = Path(folder)
    hint = "run `packer plan` (or `packer pack`) again"
    manifest = read_manifest(folder, FORMAT, VERSION, hint)
    arrays = []
    for name in ("pieces.npy", "order.npy", "offsets.npy"):
        try:
            arrays.append(np.load(folder / name, allow_pickle=False))
        except (OSError, ValueError, EOFError) as e:
            raise FormatError(str(folder / name), f"unreadable ({str(e).splitlines()[0][:100]})", hint) from None
    pieces, order, offsets = arrays
    n = len(pieces)
    ok = (pieces.dtype == np.int64 and pieces.ndim == 2 and pieces.shape[1] == 3 and order.dtype == np.int64
          and order.ndim == 1 and offsets.dtype == np.int64 and offsets.ndim == 1 and len(offsets) >= 1
          and offsets[0] == 0 and offsets[-1] == len(order) and bool(np.all(np.diff(offsets) >= 0))
          and (len(order) == 0 or (int(order.min()) >= 0 and int(order.max()) < n))
          and (n == 0 or (int(pieces.min()) >= 0 and int(pieces[:, 2].min()) > 0)))
    if not ok:
        raise FormatError(str(folder), "pieces.npy, order.npy and offsets.npy do not form a plan "
                          "(shapes, dtypes or ranges)", hint)
    return manifest, pieces, order, offsets


def write_plan(folder: Path, pieces: np.ndarray, order: np.ndarray, offsets: np.ndarray) -> None:
    """Write the three arrays of a plan into `folder` (a stage's temporary folder; the manifest comes last)."""
    np.save(folder / "pieces.npy", pieces)
    np.save(folder / "order.npy", order)
    np.save(folder / "offsets.npy", offsets)
