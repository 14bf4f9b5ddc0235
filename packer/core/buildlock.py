"""One builder per run folder, and everyone else waiting on its commit file, outside any collective.

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

    lock file  RUN.lock   {"host", "pid", "started"}; its mtime is the builder's heartbeat
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from packer.core.errors import PackerError

HEARTBEAT = 10.0  # seconds between touches of the lock while building
PROGRESS = 30.0  # seconds between "still waiting" lines


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
    lock = run.with_name(run.name + ".lock")
    builder = local_rank() == 0 if builder is None else builder
    say = log or (lambda text: print(text, flush=True))
    start = last_line = time.monotonic()
    while True:
        if committed():
            return "ready" if time.monotonic() - start < poll else "waited"
        if builder and _acquire(lock):
            try:
                if committed():  # another builder finished between our check and the lock
                    return "ready"
                stop = threading.Event()
                beat = threading.Thread(target=_heartbeat, args=(lock, stop), daemon=True)
                beat.start()
                try:
                    build()
                finally:
                    stop.set()
                    beat.join()
                return "built"
            finally:
                _release(lock)
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


def in_use(run: str | Path, stale_seconds: float = 120.0) -> bool:
    """Whether a live builder holds `run`'s lock (what `packer cache prune` must not pull from under it)."""
    lock = Path(run).with_name(Path(run).name + ".lock")
    holder = _holder(lock)
    return holder is not None and not _stale(lock, holder, stale_seconds)


def _acquire(lock: Path) -> bool:
    """Create the lock file exclusively (O_EXCL: atomic on local and NFSv3+ filesystems)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}, f)
    return True


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
    """Remove a stale lock so that exactly one waiter's rename wins (the others find it gone)."""
    aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
    try:
        os.replace(lock, aside)
        aside.unlink()
    except FileNotFoundError:
        pass


def _heartbeat(lock: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        try:
            os.utime(lock)
        except FileNotFoundError:
            return
