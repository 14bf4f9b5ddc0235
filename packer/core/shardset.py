"""Open a shards folder and check it before anything reads it: the torch-free reader of a run.

Every open checks the structure, O(metadata) and no hashing: the manifest's seal and entries (names,
counts, sizes), each shard file a regular file inside the folder, its header and offsets
(packer.core.formats.shards.check_shard), and in a run folder that the shards belong to the plan beside them.
Token ids and mask bytes are checked per pack as they are read (check_values). The files' sha256 is
checked once per run and machine (verify_once).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np

from packer.core.formats import shards as fmt
from packer.core.errors import REBUILD_HINT, FormatError
from packer.core.manifest import MANIFEST, read_manifest, verify_files
from packer.core.ranges import within
from packer.core.runstore import cache_dir, local_run

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
        if name != fmt.shard_name(i):
            raise FormatError(str(where), f"shards[{i}] names {name!r}, expected {fmt.shard_name(i)!r} (entries dropped, "
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
    marker = cache_dir() / "verified" / key
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
    """The shards folder: `path` itself, or `path/shards` for a run folder made by `packer pack`; a URL
    (s3://...) is the local copy of the run committed there (packer.core.runstore.fetch)."""
    p = local_run(path)
    if (p / MANIFEST).is_file() or not (p / "shards" / MANIFEST).is_file():
        return p
    return p / "shards"


class ShardSet:
    """The packs of a shards folder (or a run folder), validated and memory-mapped, as numpy views.

    The torch-free reader under packer.train.reader.PackedShards (the runtime) and packer.build.report (the
    build side): both see exactly the same checks.
    """

    def __init__(self, path: str | Path, *, verify: bool = True):
        """Open and validate a shards (or run) folder.

        Every open checks the structure (O(metadata), no hashing): the manifest's seal and entries, each
        shard file inside the folder, its size, header and offsets (packer.core.formats.shards.check_shard). With
        verify=True (the default) every file's sha256 is checked once per run: a marker in the user's
        cache, keyed by the manifest and the files' sizes and mtimes, skips it on later opens.
        """
        self.path = resolve(path)
        self.manifest = read_manifest(self.path, fmt.FOLDER_FORMAT, fmt.FOLDER_VERSION,
                                      "run `packer pack` to build the shards")
        entries, self.pack_len, self.vocab_size = check_manifest(self.path, self.manifest)
        check_lineage(self.path, self.manifest)
        config = self.manifest.get("config")
        plan = config.get("plan") if isinstance(config, dict) and isinstance(config.get("plan"), dict) else {}
        self.cp_size = plan.get("cp_size", 1)
        """The context-parallel size the packs were planned for (1: none; older runs have no such key)."""
        if not isinstance(self.cp_size, int) or isinstance(self.cp_size, bool) or self.cp_size < 1:
            raise FormatError(str(self.path / MANIFEST), f"config.plan.cp_size is {self.cp_size!r}, not a whole number "
                              ">= 1", REBUILD_HINT)
        self.layout = str(plan.get("layout", "best-fit"))
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
        self._len = sum(s.num_packs for s in self.shards)
        # Per pack: its shard and index there, as Python lists (the fastest scalar lookup).
        counts = [s.num_packs for s in self.shards]
        self._shard_of = np.repeat(np.arange(len(self.shards)), counts).tolist()
        self._local = within(np.asarray(counts, dtype=np.int64)).tolist()

    def __len__(self) -> int:
        return self._len

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
