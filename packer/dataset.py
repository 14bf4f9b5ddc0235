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

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import torch

from packer import config as C
from packer import format as fmt
from packer.errors import REBUILD_HINT, ConfigError, FormatError
from packer.manifest import MANIFEST, read_manifest, verify_files
from packer.ranges import within
from packer.shards import FORMAT, VERSION

IGNORE = -100


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
    from packer.shards import shard_name

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
    extra = sorted(set(files) - {e["file"] for e in entries})
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


def _cache_dir() -> Path:
    root = os.environ.get("PACKER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "packer")
    return Path(root)


def check_files(folder: Path, manifest: dict) -> None:
    """Every file's size and sha256 against the manifest (one hashing pass); FormatError names the first bad one."""
    bad = verify_files(folder, manifest)
    if bad:
        raise FormatError(str(folder / bad[0]), "checksum differs from manifest.json", REBUILD_HINT)


def verify_once(folder: Path, manifest: dict) -> None:
    """sha256 of every file against the manifest, skipped when this exact run (manifest seal, every file's
    size and mtime) was verified before on this machine."""
    stats = {n: (folder / n).stat() for n in sorted(manifest["files"])}
    stamp = {n: [st.st_size, st.st_mtime_ns] for n, st in stats.items()}
    key = hashlib.sha256(json.dumps([manifest.get("manifest_sha256"), stamp]).encode()).hexdigest()
    marker = _cache_dir() / "verified" / key
    if marker.is_file():
        return
    check_files(folder, manifest)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(str(folder.resolve()) + "\n")
        tmp.rename(marker)
    except OSError:
        pass  # a read-only cache only costs the next open another pass


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

    def __init__(self, path: str | Path, *, label_mode: str = "unshifted", verify: bool = True):
        """Open and validate a shards (or run) folder.

        Every open checks the structure (O(metadata), no hashing): the manifest's seal and entries, each
        shard file inside the folder, its size, header and offsets (packer.format.check_shard). With
        verify=True (the default) every file's sha256 is checked once per run: a marker in the user's
        cache, keyed by the manifest and the files' sizes and mtimes, skips it on later opens.
        """
        if label_mode not in C.LABEL_MODES:
            raise ConfigError(f"label_mode '{label_mode}' is not one of {', '.join(C.LABEL_MODES)}")
        self.path = resolve(path)
        self.manifest = read_manifest(self.path, FORMAT, VERSION, "run `packer pack` to build the shards")
        self.label_mode = label_mode
        entries, self.pack_len, self.vocab_size = check_manifest(self.path, self.manifest)
        check_lineage(self.path, self.manifest)
        if verify:
            verify_once(self.path, self.manifest)
        self.shards: list[fmt.Shard] = []
        for s in entries:
            shard = fmt.open_shard(self.path / s["file"])
            if shard.num_packs != s["packs"] or len(shard.tokens) != s["tokens"] or \
                    len(shard.segment_lengths) != s["segments"]:
                raise FormatError(str(self.path / s["file"]), "packs, segments or tokens differ from manifest.json",
                                  REBUILD_HINT)
            if fmt.TOKEN_DTYPES[fmt.token_dtype_code(self.vocab_size)] != shard.tokens.dtype:
                raise FormatError(str(self.path / s["file"]), f"token dtype {shard.tokens.dtype} does not match the "
                                  f"vocabulary size {self.vocab_size} in manifest.json", REBUILD_HINT)
            fmt.check_shard(shard, self.pack_len)
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
        self.__init__(state["path"], label_mode=state["label_mode"], verify=False)  # the parent verified

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
        check_values(v["tokens"], v["loss_mask"], self.vocab_size, self.locate(i)[0].path, i)
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
