"""One writer per run folder; under torchrun, one builder and everyone else waiting on its commit.

Every command that writes a run folder (`pack`, `tokenize`, `plan`, `write`, `report`, pack_dataset's
out=) holds the folder's lock for the whole write (`writing`): a second writer is refused at once with a
one-line error naming the holder (command, host, pid, start time), so two runs never interleave their
stages in one folder. The lock is re-entrant within a thread (pack inside build_once, report inside
pack).

Under torchrun every process calls the same entry point. The process with LOCAL_RANK 0 on each node
(the builder) takes an exclusive lock file beside the run folder and builds; every other process
polls the run's commit file (what `committed` says) with a timeout and a progress line. Nothing waits
inside `torch.distributed`, so no NCCL watchdog can fire however long the build takes.

Misconfigurations leave one complete, correct run:
- two builders of one run (a shared cache, or every process thinking it is rank 0): the lock admits
  one; the others find the run committed when they get the lock or while they wait;
- a builder that died: its lock is stale (same host and its pid is gone, or no heartbeat for
  `stale_seconds`) and the next builder breaks it and builds. The stages themselves commit by rename,
  so a half-built run is never read.

    lock file  RUN.lock   {"host", "pid", "started", "command"}; its mtime is the holder's heartbeat
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from packer.core.errors import ConfigError, PackerError

HEARTBEAT = 10.0  # seconds between touches of the lock while building
PROGRESS = 30.0  # seconds between "still waiting" lines
STALE = 120.0  # seconds without a heartbeat after which a lock's holder is taken for dead (12 missed beats)

_HELD: dict[tuple[str, int], int] = {}  # (lock path, thread) -> depth: the locks this process holds
_HELD_GUARD = threading.Lock()


def lock_path(run: str | Path) -> Path:
    """The lock file of a run folder: RUN.lock beside it (what `packer cache prune` looks for too)."""
    run = Path(run)
    return run.with_name(run.name + ".lock")


def describe(holder: dict | None) -> str:
    """The holder of a lock in words: command, host, pid and start time."""
    if not holder:
        return "a writer whose lock file is being written or is damaged"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"{holder.get('command') or 'packer'} (pid {holder.get('pid')} on {holder.get('host')}, since {when})"


@contextmanager
def writing(run: str | Path, command: str = "packer") -> Iterator[None]:
    """Hold `run`'s lock while writing it; re-entrant within this thread.

    A lock held by a live writer is a ConfigError naming it (nothing is touched); a stale one (its process
    is gone, or no heartbeat for STALE seconds) is broken and taken.
    """
    lock = lock_path(run)
    key = (os.path.abspath(lock), threading.get_ident())
    with _HELD_GUARD:
        depth = _HELD.get(key, 0)
        if depth:
            _HELD[key] = depth + 1
    if depth:
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD[key] -= 1
        return
    if not _acquire(lock, command):
        holder = _holder(lock)
        if holder is not None and _stale(lock, holder, STALE):
            _break(lock)  # its writer is gone
        if not _acquire(lock, command):  # a live writer holds it (or took it just now)
            raise ConfigError(f"{run} is being written by {describe(_holder(lock))}; wait for it to finish "
                              f"or write to another folder (its lock: {lock})")
    with _held(lock, key):
        yield


@contextmanager
def _held(lock: Path, key: tuple[str, int]) -> Iterator[None]:
    """Keep an acquired lock alive (heartbeat) and registered as held, then release it."""
    with _HELD_GUARD:
        _HELD[key] = 1
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lock, stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with _HELD_GUARD:
            _HELD.pop(key, None)
        _release(lock)


def local_rank() -> int:
    """LOCAL_RANK (torchrun), else RANK, else 0: the process with 0 builds on its node."""
    for name in ("LOCAL_RANK", "RANK"):
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return 0


def build_once(run: str | Path, build: Callable[[], None], committed: Callable[[], bool], *,
               builder: bool | None = None, timeout: float = 3600, poll: float = 0.5,
               stale_seconds: float = 120.0, log: Callable[[str], None] | None = None) -> str:
    """Build `run` once across processes; returns "ready" (it was there), "built" or "waited".

    builder: whether this process may build (default: LOCAL_RANK 0). Raises PackerError naming the
    run, the lock's holder and what to do when `timeout` seconds pass without a commit.
    """
    run = Path(run)
    lock = lock_path(run)
    builder = local_rank() == 0 if builder is None else builder
    say = log or (lambda text: print(text, flush=True))
    start = last_line = time.monotonic()
    while True:
        if committed():
            return "ready" if time.monotonic() - start < poll else "waited"
        if builder and _acquire(lock, "packed_dataset_from_files"):
            with _held(lock, (os.path.abspath(lock), threading.get_ident())):
                if committed():  # another builder finished between our check and the lock
                    return "ready"
                build()  # pack() inside takes the same lock again: re-entrant in this thread
                return "built"
        holder = _holder(lock)
        if holder is not None and _stale(lock, holder, stale_seconds):
            _break(lock)
            say(f"packer: {run}: removed the stale lock of {holder.get('host')}:{holder.get('pid')} (it is gone)")
            continue
        now = time.monotonic()
        if now - start > timeout:
            who = f"{holder.get('host')}:{holder.get('pid')}" if holder else "no builder (no lock file)"
            raise PackerError(f"{run}: not committed after {timeout:.0f} s waiting; builder: {who}. Check the "
                              "builder's log (LOCAL_RANK 0 on each node builds), or raise wait_seconds")
        if now - last_line >= PROGRESS:
            last_line = now
            who = f"{holder.get('host')}:{holder.get('pid')}" if holder else "a builder (no lock yet)"
            say(f"packer: waiting {now - start:.0f} s for {who} to finish packing {run}")
        time.sleep(poll)


def in_use(run: str | Path, stale_seconds: float = STALE) -> bool:
    """Whether a live writer holds `run`'s lock (what `packer cache prune` must not pull from under it)."""
    lock = lock_path(run)
    holder = _holder(lock)
    return holder is not None and not _stale(lock, holder, stale_seconds)


def _acquire(lock: Path, command: str = "packer") -> bool:
    """Create the lock file exclusively, its content complete from the first instant: written to a private
    file first, then hard-linked to the lock's name (link fails when the name exists: atomic on local and
    NFS filesystems), so a reader never sees a lock without its holder."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    mine = lock.with_name(f".{lock.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}")
    mine.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                                "command": command}))
    try:
        os.link(mine, lock)
        return True
    except FileExistsError:
        return False
    finally:
        mine.unlink(missing_ok=True)


def _release(lock: Path) -> None:
    try:
        holder = _holder(lock)
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            lock.unlink()
    except FileNotFoundError:
        pass


def _holder(lock: Path) -> dict | None:
    try:
        data = json.loads(lock.read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written right now, or damaged: judged by its age alone
        return {}


def _stale(lock: Path, holder: dict, stale_seconds: float) -> bool:
    """Same host and the pid is gone, or no heartbeat (mtime) for stale_seconds."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
    return age > stale_seconds


def _break(lock: Path) -> None:
    """Remove a stale lock so that exactly one waiter's rename wins (the others find it gone). A lock
    taken anew between the judgement and the rename (another inode) is put back, never removed."""
    try:
        judged = lock.stat().st_ino
    except FileNotFoundError:
        return
    aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
    try:
        os.replace(lock, aside)
    except FileNotFoundError:
        return
    if aside.stat().st_ino != judged:  # a live writer's fresh lock: hand it back
        try:
            os.link(aside, lock)
        except FileExistsError:
            pass
    aside.unlink()


def _heartbeat(lock: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        try:
            os.utime(lock)
        except FileNotFoundError:
            return
