"""Run folders on object stores (`--out s3://bucket/run`): publish a finished run, fetch one to read.

Object stores have no rename, so a run is committed by one object: `shards/manifest.json`, written
last. `publish` first removes an older run's manifest (a run being replaced is never half old and half
new to a reader), uploads the shards and the reports, then the manifest, then deletes shard objects
no manifest lists. `fetch` trusts nothing but a committed manifest: it downloads each file the manifest
lists into the user's cache (under a name taken from the manifest's own hash), checks its size and
sha256 before renaming it into place, and returns the local run folder, which PackedShards and
PackedLoader then open like any other. A run interrupted before its commit has no manifest and so
does not exist for any reader.

The stages run in a local staging folder (`staging(url)`, in the cache) and reuse it on rerun; only
the products (shards and reports) are uploaded. URLs go through fsspec (packer.core.storage), as inputs do.

One publisher per URL (`publishing`): a lock object `_packer_lock.json` at the URL, created only if absent
(fsspec's pipe_file mode="create": S3's conditional PUT, If-None-Match, is atomic; on stores without
conditional writes fsspec checks then writes, which leaves a small window), refreshed while held and
removed after the commit. A second publisher is refused with the holder named; a lock not refreshed for
STORE_STALE seconds is taken for dead and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from packer.core.cache import cache_dir
from packer.core.buildlock import describe
from packer.core.errors import ConfigError, FormatError
from packer.core.manifest import MANIFEST, sha256_file
from packer.core.storage import filesystem, is_url, unreachable

COMMIT = f"shards/{MANIFEST}"
PRODUCTS = ("report.json", "report.md", "report.html")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
HINT = "run `packer pack ... --out URL` again to publish a complete run"
LOCK = "_packer_lock.json"
STORE_HEARTBEAT = 30.0  # seconds between refreshes of a held lock object
STORE_STALE = 600.0  # a lock object not refreshed for this long is taken for dead (store clocks may drift)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def staging(url: str) -> Path:
    """The local folder where the stages of the run published at `url` are built (and reused on rerun)."""
    return cache_dir() / "staging" / _key(url.rstrip("/"))


def _join(inner: str, name: str) -> str:
    return f"{inner.rstrip('/')}/{name}"


def _alive(pid: object) -> bool:
    """Whether process `pid` runs on this host (a lock of a killed publisher here can be taken at once)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _lock_age(fs, path: str) -> float:
    """Seconds since the lock object was last written, from the store's own timestamp."""
    info = fs.info(path)
    stamp = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    if isinstance(stamp, datetime):
        return (datetime.now(timezone.utc) - stamp.astimezone(timezone.utc)).total_seconds()
    return time.time() - float(stamp) if stamp is not None else 0.0


@contextmanager
def publishing(url: str, command: str = "packer") -> Iterator[None]:
    """Hold the URL's lock object while building and publishing the run there (see the module docstring).

    Raises ConfigError naming the holder (command, host, pid, start) when another publisher holds it."""
    fs, inner = filesystem(url)
    path = _join(inner, LOCK)
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                       "command": command}).encode()
    try:
        for attempt in range(2):
            try:
                fs.pipe_file(path, body, mode="create")
                break
            except FileExistsError:
                try:
                    holder, age = json.loads(fs.cat_file(path)), _lock_age(fs, path)
                except FileNotFoundError:  # released meanwhile: try again
                    continue
                except ValueError:
                    holder, age = {}, _lock_age(fs, path)
                dead = holder.get("host") == socket.gethostname() and not _alive(holder.get("pid"))
                if attempt or (age < STORE_STALE and not dead):
                    raise ConfigError(f"{url} is being published by {describe(holder)}; wait for it to finish or "
                                      f"publish to another URL (its lock object: {url.rstrip('/')}/{LOCK})") from None
                fs.rm_file(path)  # its publisher stopped refreshing it long ago: gone
        else:
            raise ConfigError(f"{url}: could not take the lock object {LOCK}; try again")
    except (OSError, ValueError) as e:
        if isinstance(e, FileExistsError):
            raise
        raise unreachable(url, e) from None
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(STORE_HEARTBEAT):
            try:
                fs.pipe_file(path, body)
            except Exception:  # a refresh that fails only lets the lock age; the publish itself reports errors
                pass

    beat = threading.Thread(target=refresh, daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        try:
            if fs.cat_file(path) == body:  # still ours (never remove a lock another publisher took over)
                fs.rm_file(path)
        except Exception:
            pass


def publish(run: Path, url: str) -> None:
    """Upload the finished local run `run` to `url`; the shards manifest goes last and commits it."""
    fs, inner = filesystem(url)
    local = Path(run) / "shards"
    listed = json.loads((local / MANIFEST).read_text(encoding="utf-8"))["files"]
    try:
        if fs.exists(_join(inner, COMMIT)):
            fs.rm_file(_join(inner, COMMIT))  # un-commit first: readers see the old run, or nothing
        for name in sorted(listed):
            fs.put_file(str(local / name), _join(inner, f"shards/{name}"))
        for name in PRODUCTS:
            if (Path(run) / name).is_file():
                fs.put_file(str(Path(run) / name), _join(inner, name))
        fs.put_file(str(local / MANIFEST), _join(inner, COMMIT))  # the commit point
        fs.invalidate_cache(_join(inner, "shards"))
        for path in fs.ls(_join(inner, "shards"), detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if name != MANIFEST and name not in listed:
                fs.rm_file(path)  # an older run's shard: listed by no manifest, so no reader trusts it
    except (OSError, ValueError) as e:
        raise unreachable(url, e) from None


def fetch(url: str) -> Path:
    """The local copy (in the cache) of the run committed at `url`, downloading what is missing.

    Raises FormatError when no run is committed there, or when a listed file's size or sha256 differs
    from the manifest (the upload was damaged or replaced): never a run that quietly differs."""
    fs, inner = filesystem(url)
    fs.invalidate_cache(_join(inner, "shards"))
    try:
        raw = fs.cat_file(_join(inner, COMMIT))
    except FileNotFoundError:
        raise FormatError(url, f"holds no committed run: {COMMIT} is missing (the run was interrupted before "
                          "its commit, or the URL is wrong)", HINT) from None
    except Exception as e:
        raise unreachable(url, e) from None
    files = _listing(url, raw)
    folder = cache_dir() / "runs" / hashlib.sha256(raw).hexdigest()[:16] / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    os.utime(folder.parent)  # its last use, for `packer cache prune`
    for name, meta in sorted(files.items()):
        dest = folder / name
        if dest.is_file() and dest.stat().st_size == meta["bytes"]:
            continue  # renamed into place only after its checks passed
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        try:
            fs.get_file(_join(inner, f"shards/{name}"), str(tmp))
        except FileNotFoundError:
            raise FormatError(f"{url}/shards/{name}", "is listed by the run's manifest but missing", HINT) from None
        except Exception as e:
            raise unreachable(url, e) from None
        if tmp.stat().st_size != meta["bytes"] or sha256_file(tmp) != meta["sha256"]:
            tmp.unlink()
            raise FormatError(f"{url}/shards/{name}", "differs from the run's manifest (size or sha256)", HINT)
        tmp.rename(dest)
    tmp = folder / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_bytes(raw)
    tmp.rename(folder / MANIFEST)
    return folder.parent


def _listing(url: str, raw: bytes) -> dict[str, dict]:
    """The manifest's file list, checked before any name becomes a local path."""
    where = f"{url}/{COMMIT}"
    try:
        files = json.loads(raw)["files"]
    except (ValueError, KeyError, TypeError):
        raise FormatError(where, "is not a Packer shards manifest", HINT) from None
    if not isinstance(files, dict):
        raise FormatError(where, "'files' is not a mapping of names", HINT)
    for name, meta in files.items():
        if not isinstance(name, str) or not _NAME.match(name) or name in (".", "..", MANIFEST):
            raise FormatError(where, f"lists the file name {name!r}, which is not a plain file name", HINT)
        if not (isinstance(meta, dict) and isinstance(meta.get("bytes"), int) and meta["bytes"] >= 0
                and isinstance(meta.get("sha256"), str)):
            raise FormatError(where, f"the entry for {name} needs 'bytes' and 'sha256'", HINT)
    return files


def local_run(path: str | Path) -> Path:
    """A path as a local folder: URLs are fetched (see fetch), local paths returned as they are."""
    if isinstance(path, str) and is_url(path):
        if path.rstrip("/").endswith("/shards"):
            path = path.rstrip("/")[: -len("/shards")]
        return fetch(path)
    return Path(path)


__all__ = ["COMMIT", "LOCK", "publishing", "staging", "publish", "fetch", "local_run"]
