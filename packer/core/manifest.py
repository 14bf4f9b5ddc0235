"""Stage folders: written under a temporary name, the manifest last, then renamed into place.

A folder whose manifest.json exists is complete; a folder with another name is never read. A stage
whose config digest and input digests match the existing manifest is skipped (resume).

Every reader of a stage folder checks the manifest's seal on open, and every file's sha256 once per
run and machine (verify_once): a marker in the user's cache, keyed by the manifest's seal and each
file's (device, inode, size, mtime, ctime), vouches for files already hashed. commit_stage leaves such
a marker for the files it has just hashed, so the next stage does not hash them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from packer.core.cache import cache_dir
from packer.core.errors import REBUILD_HINT, FormatError

MANIFEST = "manifest.json"
SEAL = "manifest_sha256"  # sha256 of the manifest's own content without this key: any edit breaks it


class Manifest(TypedDict, total=False):
    """What every stage returns and writes as manifest.json (docs/FORMAT.md lists each stage's keys).

    Every manifest has format, version, digest (of the config and the inputs' digests: the stage is
    skipped when it matches), config, counts, files ({name: {bytes, sha256}}) and manifest_sha256;
    each stage adds its own keys (inputs, tokenizer, chunks, plan, shards, lineage, ...).
    """

    format: str
    version: int
    digest: str
    config: dict[str, Any]
    counts: dict[str, Any]
    files: dict[str, dict[str, Any]]
    manifest_sha256: str


def seal(data: dict) -> str:
    """The manifest's digest over its own content (canonical JSON, this key left out)."""
    body = {k: v for k, v in data.items() if k != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read 4 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, data: object) -> None:
    """JSON with sorted keys and no timestamps, so reruns give identical bytes."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_manifest(folder: Path, fmt: str, version: int, hint: str) -> Manifest:
    """The manifest of a complete stage folder of format `fmt`, or a FormatError saying what to re-run."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FormatError(str(folder), "no manifest.json: the stage did not finish", hint)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise FormatError(str(path), f"unreadable manifest ({getattr(e, 'msg', type(e).__name__)})", hint) from None
    except OSError as e:
        raise FormatError(str(path), f"cannot read the manifest ({e.strerror})", hint) from None
    if not isinstance(data, dict):
        raise FormatError(str(path), f"unreadable manifest (a JSON {type(data).__name__}, not an object)", hint)
    if data.get("format") != fmt:
        raise FormatError(str(path), f"format is {data.get('format')!r}, expected {fmt!r}", hint)
    if data.get("version") != version:
        raise FormatError(str(path), f"version {data.get('version')} is not the supported {version}",
                          "re-run the stage with this version of packer")
    if data.get(SEAL) != seal(data):
        raise FormatError(str(path), f"edited or damaged: its {SEAL} does not match its content",
                          hint or "re-run the stage that wrote it")
    return data


def current(folder: Path, fmt: str, version: int, digest: str, *, rehash: bool = False) -> Manifest | None:
    """The existing manifest when it was made from the same inputs and config and its files are intact
    (sizes always, sha256 too with rehash), else None: a damaged or stale stage is rebuilt, not kept."""
    try:
        data = read_manifest(folder, fmt, version, "")
    except FormatError:
        return None
    if data.get("digest") != digest:
        return None
    files = data.get("files")
    if not isinstance(files, dict):
        return None
    for name, meta in files.items():
        p = Path(folder) / name
        if not p.is_file() or not isinstance(meta, dict) or p.stat().st_size != meta.get("bytes"):
            return None
    if rehash and verify_files(folder, data):
        return None
    return data


def committed_stamp(folder: Path) -> tuple[int, int, int] | None:
    """Which commit of a stage folder is in place: its manifest's (inode, mtime, ctime), None when there is
    none. A stage rebuilt (committed anew) has another stamp, so the stages after it know to rebuild."""
    try:
        st = (Path(folder) / MANIFEST).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns


_TEMP = re.compile(r"^\.(?:.+)\.(?:tmp|old)-(\d+)$")


def remove_stale_temps(folder: Path, *, locked: bool, names: str = "") -> list[str]:
    """Remove the hidden temporaries (`.NAME.tmp-PID`, `.NAME.old-PID`) a killed writer left in `folder`:
    every one when the caller holds the folder's writer lock (no other writer can be at work in it), else
    only those whose process is gone from this host. names: only temporaries of `.NAMES...`. Returns the
    names removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        if not m or not p.name.startswith(f".{names}"):
            continue
        if not locked:
            try:
                os.kill(int(m.group(1)), 0)
                continue  # its writer is alive
            except ProcessLookupError:
                pass
            except (PermissionError, OverflowError):
                continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def commit_stage(final: Path, build: Callable[[Path], dict]) -> Manifest:
    """Run build(tmp) in a fresh temporary folder beside `final`, add file checksums, write the
    manifest last and rename the folder into place, replacing any older output."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        manifest = build(tmp)
        manifest["files"] = {
            p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(tmp.iterdir()) if p.name != MANIFEST
        }
        manifest[SEAL] = seal(manifest)
        write_json(tmp / MANIFEST, manifest)
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            final.rename(old)
            shutil.rmtree(old)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _mark_verified(final, manifest)  # hashed just above: readers need not hash these files again
    return manifest


def verify_files(folder: Path, manifest: dict) -> list[str]:
    """Names of files whose size or sha256 differs from the manifest (empty when all is well)."""
    bad = []
    for name, meta in manifest.get("files", {}).items():
        p = Path(folder) / name
        if not p.is_file() or p.stat().st_size != meta["bytes"] or sha256_file(p) != meta["sha256"]:
            bad.append(name)
    return bad


def check_files(folder: Path, manifest: dict) -> None:
    """Every file's size and sha256 against the manifest (one hashing pass); FormatError names the first bad one."""
    bad = verify_files(folder, manifest)
    if bad:
        raise FormatError(str(Path(folder) / bad[0]), "checksum differs from manifest.json", REBUILD_HINT)


def _marker(folder: Path, manifest: dict) -> Path:
    """The verified-marker of these very files: keyed by the manifest's seal and, per file, what git's index
    keys a file by (device, inode, size, mtime, ctime). A copy (new inodes, even with the mtimes kept) or a
    file rewritten in place (its ctime moves, even when the mtime is put back) has another key."""
    stats = {n: (Path(folder) / n).stat() for n in sorted(manifest["files"])}
    stamp = {n: [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns] for n, st in stats.items()}
    key = hashlib.sha256(json.dumps([manifest.get(SEAL), stamp]).encode()).hexdigest()
    return cache_dir() / "verified" / key


def _mark_verified(folder: Path, manifest: dict) -> None:
    try:
        marker = _marker(folder, manifest)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(str(Path(folder).resolve()) + "\n")
        tmp.rename(marker)
    except OSError:
        pass  # a read-only cache only costs the next open another pass


def verify_once(folder: Path, manifest: dict) -> None:
    """sha256 of every file of a stage folder against its manifest, skipped when these very files were
    verified before on this machine (see _marker); FormatError names the first file that differs."""
    try:
        if _marker(folder, manifest).is_file():
            return
    except FileNotFoundError:
        pass  # a listed file is missing: check_files names it
    check_files(folder, manifest)
    _mark_verified(folder, manifest)
