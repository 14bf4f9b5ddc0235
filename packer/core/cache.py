"""The user's Packer cache folder: what it holds, and pruning what was not used lately (`packer cache`).

    CACHE/staging/KEY/    runs built for `pack(out="s3://...")`, reused when the same URL is packed again
    CACHE/runs/HASH/      whole local copies of runs fetched from object stores (runstore.fetch: packer export)
    CACHE/ranges/HOST-PID-N-R/  sparse copies of runs streamed by range (PackedShards("s3://...")), one per
                          reader process, removed when it ends (a dead one's by the next reader on the host);
                          not an entry `packer cache` lists or prunes
    CACHE/files/KEY/      runs of packed_dataset_from_files (its default cache_dir)
    CACHE/verified/KEY    markers of runs whose sha256s were checked on this machine

CACHE is PACKER_CACHE, else XDG_CACHE_HOME/packer, else ~/.cache/packer. An entry's last use is the
newest mtime inside it (fetching a run and opening a packed_dataset_from_files run touch it). Pruning
never removes an entry whose build lock (KEY.lock, packer.core.buildlock) is held by a live builder, and
removes an entry by renaming it out of sight first, so a reader never sees half of one.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from packer.core.buildlock import in_use

ENTRY_KINDS = ("staging", "runs", "files", "verified")


def cache_dir() -> Path:
    """The user's Packer cache: PACKER_CACHE, else XDG_CACHE_HOME/packer, else ~/.cache/packer."""
    root = os.environ.get("PACKER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "packer")
    return Path(root)


@dataclass(frozen=True)
class Entry:
    kind: str
    path: Path
    bytes: int
    last_used: float  # seconds since the epoch


def _walk(path: Path) -> tuple[int, float]:
    """(bytes, newest mtime) of a file or a folder's tree."""
    st = path.lstat()
    size, newest = st.st_size if path.is_file() else 0, st.st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, _dirs, files in os.walk(path):
            newest = max(newest, os.lstat(root).st_mtime)
            for name in files:
                fst = os.lstat(os.path.join(root, name))
                size, newest = size + fst.st_size, max(newest, fst.st_mtime)
    return size, newest


def entries(root: Path | None = None) -> list[Entry]:
    """Every entry of the cache, by kind then name (locks and temporary files belong to their entry)."""
    root = cache_dir() if root is None else root
    found = []
    for kind in ENTRY_KINDS:
        folder = root / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.endswith(".lock") or path.name.startswith("."):
                continue
            size, newest = _walk(path)
            found.append(Entry(kind, path, size, newest))
    return found


def prune(older_than_days: float = 0.0, kinds: tuple[str, ...] = ENTRY_KINDS, *, dry_run: bool = False,
          root: Path | None = None) -> tuple[list[Entry], list[Entry]]:
    """Remove the entries of `kinds` not used for `older_than_days` days; returns (removed, kept in use).

    dry_run: only say what would go.
    """
    unknown = sorted(set(kinds) - set(ENTRY_KINDS))
    if unknown:
        raise ValueError(f"unknown cache kind(s) {', '.join(unknown)}; choose from {', '.join(ENTRY_KINDS)}")
    if older_than_days < 0:
        raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")
    cutoff = time.time() - older_than_days * 86400
    removed, busy = [], []
    for e in entries(root):
        if e.kind not in kinds or e.last_used > cutoff:
            continue
        if in_use(e.path):
            busy.append(e)
            continue
        removed.append(e)
        if dry_run:
            continue
        gone = e.path.with_name(f".{e.path.name}.pruning-{os.getpid()}")
        os.replace(e.path, gone)  # out of sight at once; then deleted at leisure
        if gone.is_dir():
            shutil.rmtree(gone, ignore_errors=True)
        else:
            gone.unlink(missing_ok=True)
    return removed, busy


def touch(path: Path) -> None:
    """Mark a cache entry as used now (best effort: a read-only cache is not an error)."""
    try:
        os.utime(path)
    except OSError:
        pass


__all__ = ["ENTRY_KINDS", "Entry", "cache_dir", "entries", "prune", "touch"]
