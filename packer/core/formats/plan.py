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

from packer.core.context_parallel import padded_lengths
from packer.core.errors import FormatError
from packer.core.manifest import check_files, read_manifest, verify_once

FORMAT = "packer-plan"
VERSION = 6  # 2: manifests carry manifest_sha256; 3: mixture weights (a row may repeat), deterministic solver;
# 4: counts.per_file (what the over-long policy and the mixture did to each input file); 5: config.max_patches;
# 6: config.even and config.even_attention, plan.even (what evening the packs' work changed)


FILES = ("pieces.npy", "order.npy", "offsets.npy")


def read_plan(folder: str | Path, *, verify: bool = True) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(manifest, pieces, order, offsets) of a plan folder, checked before use: the manifest's seal, every
    file's sha256 once per run (verify=True, the default), and the arrays' structure: dtypes and shapes,
    order a permutation of the pieces (each piece in exactly one pack), packs non-empty, every pack within
    the plan's pack_len (cp padding included) and max_segments. That each piece lies inside its
    tokenized example is checked by the write stage, which has the examples' lengths."""
    folder = Path(folder)
    hint = "run `packer plan` (or `packer pack`) again"
    manifest = read_manifest(folder, FORMAT, VERSION, hint)
    if not isinstance(manifest.get("files"), dict) or sorted(manifest["files"]) != sorted(FILES):
        raise FormatError(str(folder / "manifest.json"), f"'files' does not list exactly {', '.join(FILES)}", hint)
    if verify:
        verify_once(folder, manifest)
    arrays = []
    for name in FILES:
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
    _check_packs(folder, manifest, pieces, order, offsets, hint)
    return manifest, pieces, order, offsets


def _check_packs(folder: Path, manifest: dict, pieces: np.ndarray, order: np.ndarray, offsets: np.ndarray,
                 hint: str) -> None:
    """Each piece in exactly one pack, no empty pack, every pack within pack_len and max_segments."""
    seen = np.bincount(order, minlength=len(pieces))
    if len(order) != len(pieces) or bool(np.any(seen != 1)):
        bad = int(np.flatnonzero(seen != 1)[0])
        raise FormatError(str(folder / "order.npy"), f"piece {bad} is in {int(seen[bad])} packs, not exactly one "
                          "(order.npy must be a permutation of the pieces)", hint)
    sizes = np.diff(offsets)
    if len(sizes) and int(sizes.min()) < 1:
        raise FormatError(str(folder / "offsets.npy"), f"pack {int(np.argmin(sizes))} is empty", hint)
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    pack_len, cp_size, cap = config.get("pack_len"), config.get("cp_size", 1), config.get("max_segments")
    if not isinstance(pack_len, int) or not isinstance(cp_size, int) or pack_len < 1 or cp_size < 1:
        raise FormatError(str(folder / "manifest.json"), "config.pack_len and config.cp_size must be whole "
                          "numbers >= 1", hint)
    if len(order):
        tokens = np.add.reduceat(padded_lengths(pieces[order, 2], cp_size), offsets[:-1])
        over = np.flatnonzero(tokens > pack_len)
        if over.size:
            p = int(over[0])
            raise FormatError(str(folder), f"pack {p} holds {int(tokens[p])} tokens, more than pack_len {pack_len}", hint)
        if isinstance(cap, int) and int(sizes.max()) > cap:
            raise FormatError(str(folder), f"pack {int(np.argmax(sizes))} holds {int(sizes.max())} pieces, more than "
                              f"max_segments {cap}", hint)


def write_plan(folder: Path, pieces: np.ndarray, order: np.ndarray, offsets: np.ndarray) -> None:
    """Write the three arrays of a plan into `folder` (a stage's temporary folder; the manifest comes last)."""
    np.save(folder / "pieces.npy", pieces)
    np.save(folder / "order.npy", order)
    np.save(folder / "offsets.npy", offsets)


def verify(folder: str | Path, example_lengths: np.ndarray | None = None, tokenized_digest: str | None = None) -> str:
    """The full check of a plan folder (`packer verify`): the seal, every file's sha256 (always hashed) and
    the structure (read_plan), and with the tokenized examples' lengths, that every piece lies inside its
    example. Returns a one-line summary; FormatError names what is wrong."""
    folder = Path(folder)
    manifest, pieces, order, offsets = read_plan(folder, verify=False)
    check_files(folder, manifest)
    if tokenized_digest is not None and manifest.get("input_digest") != tokenized_digest:
        raise FormatError(str(folder), "this plan was made from another tokenized stage than the one beside it",
                          "run `packer plan` (or `packer pack`) again")
    if example_lengths is not None and len(pieces):
        row, end = pieces[:, 0], pieces[:, 1] + pieces[:, 2]
        inside = row < len(example_lengths)
        if not inside.all() or bool(np.any(end > example_lengths[row])):
            raise FormatError(str(folder / "pieces.npy"), "names tokens the tokenized examples do not have",
                              "run `packer plan` (or `packer pack`) again")
    return f"{len(offsets) - 1:,} packs of {len(pieces):,} pieces"
