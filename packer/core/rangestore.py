"""Reading a run committed on an object store by byte range: only the packs this process reads, each checked.

`PackedShards("s3://bucket/run")` and `PackedLoader("s3://...")` (any fsspec URL) open a remote run here
instead of downloading it:

1. the commit object (`shards/manifest.json`) is read once, and its bytes kept;
2. every shard's head (header and metadata: docs/FORMAT.md) is fetched from `shards/heads.bin`, the heads
   end to end, in one request (one per 64 MiB), each checked against the manifest's `head_sha256`, then
   written into a sparse local copy of the shard, of the shard's full size, in the user's cache (CACHE/ranges/HOST-PID-N/): the reader memory-maps it as it maps a
   local shard, and every open-time check of a local run applies;
3. before a pack is read (`reading(packs)`), its token and mask byte ranges are fetched: adjacent ranges
   coalesced into one request, a round's requests issued together (fsspec's cat_ranges), each pack checked
   against the head's xxh3 checksums. A pack that fails is fetched once more, then refused with an error
   naming the URL, the shard and the pack. Checked bytes are written into place (pwrite);
4. the packs' bytes held stay under `cache_limit`: packs no batch needs now are evicted (their ranges
   punched out of the sparse file, fallocate PUNCH_HOLE), consumed packs first and oldest first, then
   read-ahead packs needed furthest ahead. Only this process's own cached copies are ever evicted, and never
   a pack a batch is being built from;
5. a run replaced (or being replaced) during training is refused, never mixed: every pack's bytes must match
   the checksums in the heads opened in 2, so a pack of another run cannot pass unnoticed, and whatever does
   not match (a checksum, a range's length, a missing shard) re-reads the commit object first (its bytes against
   the ones opened), to say the run was replaced rather than damaged. (Re-reading it on every round instead
   would cost a request per batch for nothing the checksums do not already catch.)

A read-ahead thread (`read_ahead`) fetches the packs of the batches to come, in the order they will be
read, as far as the cache allows beyond one batch; the batch builder then finds its packs present.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import os
import shutil
import socket
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import xxhash

from packer.core.cache import cache_dir
from packer.core.errors import ConfigError, FormatError
from packer.core.formats.shards import FOLDER_VERSION, HEADS, TOKEN_DTYPES, head_size, token_dtype_code
from packer.core.manifest import MANIFEST
from packer.core.runstore import COMMIT, HINT, _listing
from packer.core.storage import S3_RANGE_CONNECTIONS, filesystem, unreachable

DEFAULT_CACHE_LIMIT = 2 << 30
"""Bytes of packs a process keeps by default (per process: each DataLoader worker has its own cache)."""
MAX_REQUEST = 64 << 20  # a coalesced range is cut at this size, so a round's buffers stay bounded
_FALLOC_KEEP_SIZE, _FALLOC_PUNCH_HOLE = 1, 2
_counter = itertools.count()
_PAGE = 4096  # eviction frees whole pages where no held neighbour shares them
_fallocate = None


def _punch(fd: int, offset: int, length: int) -> None:
    """Free [offset, offset + length) of a file (reads give zeros; the size stays): Linux fallocate."""
    global _fallocate
    if length <= 0:
        return
    if _fallocate is None:
        _fallocate = ctypes.CDLL(None, use_errno=True).fallocate
        _fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
    if _fallocate(fd, _FALLOC_PUNCH_HOLE | _FALLOC_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _write_all(fd: int, data: bytes, offset: int, path: str) -> None:
    """pwrite every byte (a full cache disk is an error naming the cache file, never a pack cut short)."""
    view = memoryview(data)
    while len(view):
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(f"{path}: could not write the local cache copy (disk full?); free space in the cache "
                          "(PACKER_CACHE) or lower cache_limit")
        view, offset = view[n:], offset + n


def _alive(name: str) -> bool:
    """Whether the process that made cache folder HOST-PID-N-R still runs (another host's: assumed so)."""
    parts = name.rsplit("-", 3)
    if len(parts) != 4 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _remove(root: str, pid: int) -> None:
    """Remove a reader's cache folder, in the process that made it only (a forked worker inherits the
    finalizer, and must not remove its parent's copies)."""
    if os.getpid() == pid:
        shutil.rmtree(root, ignore_errors=True)


class RemoteRun:
    """The run committed at `url`, as a local folder of sparse shard copies whose heads are checked and whose
    packs are fetched on demand (see the module docstring). `folder` is the local shards folder to open."""

    def __init__(self, url: str, cache_limit: int | None = DEFAULT_CACHE_LIMIT):
        if cache_limit is not None and (isinstance(cache_limit, bool) or not isinstance(cache_limit, int)
                                        or cache_limit < 1):
            raise ConfigError(f"cache_limit={cache_limit!r}: give the bytes of packs to keep cached (an int), or None "
                              "to keep every pack fetched")
        url = url.rstrip("/")
        if url.endswith("/shards"):
            url = url[: -len("/shards")]
        self.url, self.cache_limit = url, cache_limit
        self.fs, self.inner = filesystem(url, connections=S3_RANGE_CONNECTIONS)
        self.commit = f"{self.inner}/{COMMIT}"
        self.fs.invalidate_cache(f"{self.inner}/shards")
        try:
            raw = self.fs.cat_file(self.commit)
        except FileNotFoundError:
            raise FormatError(url, f"holds no committed run: {COMMIT} is missing (the run was interrupted before its "
                              "commit, or the URL is wrong)", HINT) from None
        except Exception as e:
            raise unreachable(url, e) from None
        self.raw = raw
        listed = _listing(url, raw)  # every name a plain file name before any becomes a local path
        manifest = json.loads(raw)
        if not isinstance(manifest, dict) or manifest.get("version") != FOLDER_VERSION:
            raise FormatError(f"{url}/{COMMIT}", f"version {manifest.get('version') if isinstance(manifest, dict) else None}"
                              f" is not the supported {FOLDER_VERSION}", "re-run `packer pack ... --out URL` with this "
                              "packer")
        entries, vocab = manifest.get("shards"), (manifest.get("tokenizer") or {}).get("vocab_size")
        if not isinstance(entries, list) or not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
            raise FormatError(f"{url}/{COMMIT}", "'shards' or tokenizer.vocab_size is missing (a manifest of another "
                              "version?)", "re-run `packer pack ... --out URL` with this packer")
        if manifest.get("images") is not None:
            raise ConfigError(f"{url}: streaming a run with images by range is not implemented yet; fetch the whole run "
                              "(packer.core.runstore.fetch) and open the local copy")
        root = cache_dir() / "ranges"
        root.mkdir(parents=True, exist_ok=True)
        for old in root.iterdir():  # folders of readers that died on this host: nobody maps them any more
            if old.is_dir() and not _alive(old.name):
                shutil.rmtree(old, ignore_errors=True)
        self.root = root / f"{socket.gethostname()}-{os.getpid()}-{next(_counter)}-{os.urandom(3).hex()}"
        self.folder = self.root / "shards"
        self.folder.mkdir(parents=True)
        self._finalizer = weakref.finalize(self, _remove, str(self.root), os.getpid())
        self.bytes_fetched = 0
        self.requests = 0
        code = token_dtype_code(vocab)
        heads, self.files = [], []
        for i, e in enumerate(entries):
            counts = [e.get(k) if isinstance(e, dict) else None for k in ("packs", "segments", "tokens")]
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts) or \
                    not isinstance(e.get("head_sha256"), str) or not isinstance(e.get("file"), str):
                raise FormatError(f"{url}/{COMMIT}", f"shards[{i}] needs file, packs, segments, tokens and head_sha256 "
                                  "(a manifest of another version?)", "re-run `packer pack ... --out URL` with this packer")
            heads.append(head_size(code, *counts))
            self.files.append(e["file"])
        got = self._heads(heads, listed)
        for name, e, head in zip(self.files, entries, got):
            if hashlib.sha256(head).hexdigest() != e["head_sha256"]:
                self._check_run()
                raise FormatError(f"{url}/shards/{HEADS}", f"the head (header and metadata) of {name} there differs "
                                  "from the run's manifest (head_sha256)", HINT)
            size = listed.get(name, {}).get("bytes")
            if not isinstance(size, int) or size < len(head):
                raise FormatError(f"{url}/{COMMIT}", f"files.{name}.bytes is {size!r}, shorter than its head", HINT)
            with open(self.folder / name, "wb") as f:  # a sparse copy: the head, then a hole to the full size
                f.write(head)
                f.truncate(size)
        (self.folder / HEADS).write_bytes(b"".join(got))
        (self.folder / MANIFEST).write_bytes(raw)
        self.token_dtype = TOKEN_DTYPES[code]

    def _heads(self, sizes: list[int], listed: dict) -> list[bytes]:
        """Every shard's head, from heads.bin: one request (a few for a run whose heads pass MAX_REQUEST), not
        one a shard; each is checked against its head_sha256 by the caller."""
        total = sum(sizes)
        if not isinstance(listed.get(HEADS), dict) or listed[HEADS].get("bytes") != total:
            raise FormatError(f"{self.url}/{COMMIT}", f"files.{HEADS} is missing or not the {total} bytes of the "
                              "shards' heads", HINT)
        cuts = list(range(0, total, MAX_REQUEST))  # none for a run of no shards
        parts = self._cat([f"{self.inner}/shards/{HEADS}"] * len(cuts), cuts,
                          [min(c + MAX_REQUEST, total) for c in cuts]) if cuts else []
        data = memoryview(b"".join(parts))
        ends = np.cumsum([0] + list(sizes)).tolist()
        return [bytes(data[a:b]) for a, b in zip(ends[:-1], ends[1:])]

    def _cat(self, paths: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
        """One round of range requests (issued together by stores that can), counted."""
        try:
            out = self.fs.cat_ranges(paths, starts, ends)
        except FileNotFoundError:
            self._check_run()
            raise FormatError(self.url, "a shard the manifest lists is missing from the store", HINT) from None
        except Exception as e:
            raise unreachable(self.url, e) from None
        for i, b in enumerate(out):
            if isinstance(b, BaseException):
                if isinstance(b, FileNotFoundError):
                    self._check_run()
                raise unreachable(f"{self.url}/shards/{paths[i].rsplit('/', 1)[-1]}", b)
            if len(b) != ends[i] - starts[i]:
                self._check_run()
                raise FormatError(f"{self.url}/shards/{paths[i].rsplit('/', 1)[-1]}",
                                  f"bytes {starts[i]}-{ends[i]}: the store gave {len(b)} bytes", HINT)
        self.requests += len(paths)
        self.bytes_fetched += sum(len(b) for b in out)
        return out

    def _check_run(self) -> None:
        """Refuse when the commit object is no longer the one this reader opened (a run replaced or being
        replaced at the URL): never a mix of two runs. Its bytes are compared, not the store's ETag: a manifest
        names every shard's sha256 and head, so equal bytes are the same run (a byte-identical re-run included),
        and reading it costs no request before anything has gone wrong."""
        try:
            self.fs.invalidate_cache(self.commit)
            now = self.fs.cat_file(self.commit)
        except FileNotFoundError:
            now = None
        except Exception as e:
            raise unreachable(self.url, e) from None
        if now != self.raw:
            raise FormatError(self.url, "the run committed there was replaced (or is being replaced) while this reader "
                              "read it; its packs would mix two runs", "open the URL again (a new loader) to read the "
                              "new run, and resume from a checkpoint of that run")

    def close(self) -> None:
        """Remove the local copies (also done when this object is collected)."""
        self._finalizer()


class RangeReader:
    """The packs of an opened remote run: fetched, checked and evicted on demand (module docstring, 3-5).

    `shards` are the run's Shard objects, opened on RemoteRun.folder (their heads checked)."""

    def __init__(self, run: RemoteRun, shards: list):
        self.run = run
        self.shards = shards
        self.pid = os.getpid()  # another process (a forked DataLoader worker) must open the URL itself
        self._fds = [os.open(s.path, os.O_RDWR) for s in shards]
        self._ends = [os.fstat(fd).st_size for fd in self._fds]
        weakref.finalize(self, lambda fds: [os.close(fd) for fd in fds], list(self._fds))
        counts = [s.num_packs for s in shards]
        self._shard_of = np.repeat(np.arange(len(shards)), counts)
        self._local = np.concatenate([np.arange(c) for c in counts]) if counts else np.zeros(0, np.int64)
        n = int(sum(counts))
        tok = [np.asarray(s.pack_token_offsets, np.int64) for s in shards]
        item = [s.tokens.dtype.itemsize for s in shards]
        # per pack: token byte range and mask byte range within its shard's file
        self.tok_ranges = np.zeros((n, 2), np.int64)
        self.mask_ranges = np.zeros((n, 2), np.int64)
        at = 0
        for s, t, size in zip(shards, tok, item):
            k = s.num_packs
            tokens_at = s.head
            mask_at = s.mask_at
            self.tok_ranges[at:at + k, 0] = tokens_at + t[:-1] * size
            self.tok_ranges[at:at + k, 1] = tokens_at + t[1:] * size
            self.mask_ranges[at:at + k, 0] = mask_at + t[:-1]
            self.mask_ranges[at:at + k, 1] = mask_at + t[1:]
            at += k
        self.pack_bytes = (self.tok_ranges[:, 1] - self.tok_ranges[:, 0]) + (self.mask_ranges[:, 1] - self.mask_ranges[:, 0])
        self.present = np.zeros(n, bool)
        self.held = 0
        self.bytes_of_packs_read = 0  # pack bytes handed to readers (each pack counted each time it is read)
        self._pins: dict[int, int] = {}
        self._consumed: OrderedDict[int, None] = OrderedDict()  # evicted first, oldest first
        self._ahead: dict[int, int] = {}  # pack -> the read-ahead step that needs it (evicted furthest first)
        self._inflight: set[int] = set()  # packs a thread is fetching now
        self._inflight_bytes = 0
        self.reads = 0  # reading() contexts completed (batches read, for the read-ahead's window)
        self.window = 0  # batches the read-ahead fetches ahead of the reader (it widens while the builder waits)
        self._window_cap = 0
        self._ahead_from = None  # self.reads when the running read-ahead started or last widened (None: none runs)
        self._ahead_token = None  # the running read-ahead's (a stopped one that ends late clears nothing)
        self.builder_waits = 0  # batches the builder found not fetched yet while a read-ahead ran
        # recent rounds, (packs fetched, seconds): of one batch (the read-ahead's, or the builder's own fetch
        # while a read-ahead runs), and of several (the read-ahead's)
        self._rounds_one: deque[tuple[int, float]] = deque(maxlen=4)
        self._rounds_many: deque[tuple[int, float]] = deque(maxlen=4)
        self._lock = threading.RLock()
        self._room = threading.Condition(self._lock)
        self._can_punch = None if run.cache_limit is None else self._probe_punch()

    def _probe_punch(self) -> bool:
        """cache_limit needs freeing a range of a file in place; say so at construction where the OS cannot."""
        if not self.shards:
            return True
        s = self.shards[0]
        try:
            if len(s.tokens):
                _punch(self._fds[0], s.head, 1)  # nothing fetched there yet: the byte is zero either way
        except (OSError, AttributeError) as e:
            raise ConfigError(f"cache_limit needs a local cache that can free a range of a file in place (Linux "
                              f"fallocate PUNCH_HOLE; here: {e}); set PACKER_CACHE to such a filesystem, or pass "
                              "cache_limit=None to keep every pack fetched") from None
        return True

    def need(self, batch_bytes: int, what: str) -> None:
        """Refuse, at construction, a cache_limit too small for `batch_bytes` of packs read at once."""
        limit = self.run.cache_limit
        if limit is not None and limit < batch_bytes:
            raise ConfigError(f"cache_limit={limit:,} bytes is smaller than {what} ({batch_bytes:,} bytes of packs); "
                              f"give cache_limit >= {batch_bytes:,} (or None)")

    # ------------------------------------------------------------------ fetching
    def _load(self, packs: np.ndarray) -> None:
        """Fetch, check and write `packs` (distinct, claimed by this thread): network and hashing, no lock held."""
        ranges = []  # (shard, start, end, pack, which)
        for p in packs.tolist():
            s = int(self._shard_of[p])
            ranges.append((s, int(self.tok_ranges[p, 0]), int(self.tok_ranges[p, 1]), p, 0))
            ranges.append((s, int(self.mask_ranges[p, 0]), int(self.mask_ranges[p, 1]), p, 1))
        ranges.sort()
        groups: list[list[tuple]] = []
        for r in ranges:  # coalesce ranges that touch, up to MAX_REQUEST bytes a request
            g = groups[-1] if groups else None
            if g and g[-1][0] == r[0] and g[-1][2] == r[1] and r[2] - g[0][1] <= MAX_REQUEST:
                g.append(r)
            else:
                groups.append([r])
        paths = [f"{self.run.inner}/shards/{self.run.files[g[0][0]]}" for g in groups]
        got = self.run._cat(paths, [g[0][1] for g in groups], [g[-1][2] for g in groups])
        bad = []
        for g, data in zip(groups, got):
            base = g[0][1]
            view = memoryview(data)
            for s, a, b, p, which in g:
                if not self._ok(p, which, view[a - base:b - base]):
                    bad.append((s, a, b, p, which))
            _write_all(self._fds[g[0][0]], data, base, self.shards[g[0][0]].path)
        if bad:  # another run's bytes, or damage: say which (docstring, 5)
            self.run._check_run()
        for s, a, b, p, which in bad:  # fetched once more, alone; then refused
            (again,) = self.run._cat([f"{self.run.inner}/shards/{self.run.files[s]}"], [a], [b])
            if not self._ok(p, which, memoryview(again)):
                self.run._check_run()
                local = int(self._local[p])
                raise FormatError(f"{self.run.url}/shards/{self.run.files[s]}", f"pack {local} (bytes {a}-{b}, its "
                                  f"{('tokens', 'loss mask')[which]}) fails its checksum after a second fetch: the object "
                                  "is damaged", HINT)
            _write_all(self._fds[s], again, a, self.shards[s].path)

    def _ok(self, p: int, which: int, data: memoryview) -> bool:
        sh = self.shards[int(self._shard_of[p])]
        want = (sh.pack_tokens_xxh3 if which == 0 else sh.pack_mask_xxh3)[int(self._local[p])]
        return xxhash.xxh3_64_intdigest(data) == int(want)

    def _claim(self, packs: np.ndarray, ahead: bool = False) -> np.ndarray:
        """Under the lock: wait while another thread fetches any of `packs`, then claim the absent ones for this
        thread (room made for them under cache_limit); returns them. ahead (the read-ahead): nothing is claimed
        where room cannot be made, since only a batch being read may go over cache_limit (the builder fetches
        these itself when it gets there)."""
        while any(p in self._inflight for p in packs.tolist()):
            self._room.wait()
        missing = packs[~self.present[packs]]
        if len(missing):
            size = int(self.pack_bytes[missing].sum())
            if not self._evict(size) and ahead:
                return missing[:0]
            self._inflight.update(missing.tolist())
            self._inflight_bytes += size
        return missing

    def _settle(self, packs: np.ndarray, ok: bool) -> None:
        """Under the lock: claimed packs fetched (ok) or given up."""
        if not len(packs):
            return
        self._inflight.difference_update(packs.tolist())
        size = int(self.pack_bytes[packs].sum())
        self._inflight_bytes -= size
        if ok:
            self.present[packs] = True
            self.held += size
        self._room.notify_all()

    def _evict(self, room: int) -> bool:
        """Evict unpinned packs until `room` more bytes fit under cache_limit with what is held and in flight
        (consumed packs first, then read-ahead packs needed furthest ahead); whether they fit. The caller holds
        the lock."""
        limit = self.run.cache_limit
        if limit is None:
            return True
        while self.held + self._inflight_bytes + room > limit:
            victim = next((p for p in self._consumed if p not in self._pins), None)
            if victim is None:
                ahead = [p for p in self._ahead if p not in self._pins]
                if not ahead:
                    return False  # everything held is being read: over the limit for this batch only
                victim = max(ahead, key=self._ahead.__getitem__)
            self._drop(victim)
        return True

    def _drop(self, p: int) -> None:
        """Evict pack p: its ranges punched out, with the pages they share with neighbours that are not held
        (so freed space never leaks as partial pages), never past its array's region."""
        s = int(self._shard_of[p])
        sh, j = self.shards[s], int(self._local[p])
        first, last = p - j, p - j + sh.num_packs - 1  # this shard's packs
        for ranges, (lo, hi) in ((self.tok_ranges, (sh.head, sh.mask_at)),
                                 (self.mask_ranges, (sh.mask_at, self._ends[s]))):
            a, b = int(ranges[p, 0]), int(ranges[p, 1])
            # Widen to whole pages only over packs that are not held or coming (their bytes are holes already):
            # the widened range stops at the nearest held or in-flight pack on each side, however small packs are.
            floor, ceil = max(lo, a - a % _PAGE), min(hi, -(-b // _PAGE) * _PAGE)
            q = p - 1
            while q >= first and int(ranges[q, 1]) > floor:
                if self.present[q] or q in self._inflight:
                    floor = int(ranges[q, 1])
                    break
                q -= 1
            q = p + 1
            while q <= last and int(ranges[q, 0]) < ceil:
                if self.present[q] or q in self._inflight:
                    ceil = int(ranges[q, 0])
                    break
                q += 1
            _punch(self._fds[s], floor, ceil - floor)
        self.present[p] = False
        self.held -= int(self.pack_bytes[p])
        self._consumed.pop(p, None)
        self._ahead.pop(p, None)

    def _fetch_claimed(self, packs: np.ndarray, ahead: bool = False) -> tuple[int, float]:
        """Claim, fetch and settle `packs` (the caller holds no lock; ahead: for the read-ahead, see _claim);
        returns how many were fetched and the seconds their fetch took (not the wait for another thread's)."""
        with self._lock:
            missing = self._claim(packs, ahead)
        if not len(missing):
            return 0, 0.0
        t = time.perf_counter()
        try:
            self._load(missing)
        except BaseException:
            with self._lock:
                self._settle(missing, False)
            raise
        seconds = time.perf_counter() - t
        with self._lock:
            self._settle(missing, True)
        return len(missing), seconds

    def _round_trip_bound(self) -> bool:
        """Whether the read-ahead's recent rounds say the store's round trip bounds it rather than its rate:
        rounds of several batches took less than half the time per pack that rounds of one batch took (a
        store serving requests together). Until there are rounds of both kinds, yes: widening is the probe
        (a window of one or two batches makes no round of several: the batch the builder needs goes alone).
        The caller holds the lock."""
        if not self._rounds_one or not self._rounds_many:
            return True

        def per_pack(rounds: deque) -> float:
            return float(np.median([t / n for n, t in rounds]))
        return per_pack(self._rounds_many) < 0.5 * per_pack(self._rounds_one)

    @contextmanager
    def reading(self, packs: Iterable[int]) -> Iterator[None]:
        """The packs present, checked and pinned (never evicted) while the caller reads them from the maps."""
        packs = np.unique(np.asarray(list(packs) if not isinstance(packs, np.ndarray) else packs, np.int64))
        packs = packs[packs >= 0]
        with self._lock:
            for p in packs.tolist():
                self._pins[p] = self._pins.get(p, 0) + 1
            if self._ahead_from is not None and self.reads - self._ahead_from >= self.window and \
                    not self.present[packs].all():
                # The read-ahead had its window's time and still fell short: twice as wide where the store's
                # round trip, not its rate, held it (read_ahead's docstring says why).
                self.builder_waits += 1
                if self._round_trip_bound() and self.window < self._window_cap:
                    self.window = min(2 * self.window, self._window_cap)
                    self._ahead_from = self.reads  # the wider window gets its own batches' time before the next
                    self._room.notify_all()  # a read-ahead waiting at the old window's edge goes on now
        try:
            n, seconds = self._fetch_claimed(packs)
            if n and self._ahead_from is not None:  # the builder's own fetch: a round of one batch
                with self._lock:
                    self._rounds_one.append((n, seconds))
        except BaseException:
            with self._lock:
                self._unpin(packs)
            raise
        try:
            yield
        finally:
            with self._lock:
                self._unpin(packs)
                self.bytes_of_packs_read += int(self.pack_bytes[packs].sum())
                self.reads += 1
                for p in packs.tolist():
                    self._ahead.pop(p, None)
                    self._consumed.pop(p, None)
                    self._consumed[p] = None  # read: the first to go when room is needed
                self._room.notify_all()

    def _unpin(self, packs: np.ndarray) -> None:
        for p in packs.tolist():
            left = self._pins.get(p, 0) - 1
            if left > 0:
                self._pins[p] = left
            else:
                self._pins.pop(p, None)

    def is_pinned(self, p: int) -> bool:
        return p in self._pins

    def read_ahead(self, batches: Iterable[np.ndarray], reserve: int, window: int = 4,
                   widen_to: int | None = None) -> threading.Event:
        """Fetch the packs of `batches` (in the order they will be read) in a background thread, at most `window`
        batches ahead of the batches read so far and keeping `reserve` bytes of the cache free for the batch being
        built; returns the event that stops it.

        The window doubles each time the builder, `window` batches or more after the start (or after the last
        doubling), still finds a batch not fetched while the recent rounds say the store's round trip bounds the
        read-ahead: rounds of several batches took under half the time per pack of rounds of one (the rate is
        then the window's per round trip), or there are no rounds of both kinds yet (doubling is the probe). It
        stops at `widen_to` batches (default 8 x window); the cache_limit bounds the bytes it holds whatever the
        window. Where the store's rate bounds it, no window raises the rate, and the window stays. It never
        narrows (a new epoch starts from the widest window so far): a store's slow spells recur.

        Each round fetches every batch that is inside the window and fits, in one round of requests: ahead of
        the reader that is the one batch that just entered the window, but a fetch that fell behind (a store
        slower per request than a step is long) catches up with as many batches a round as the window holds,
        so the rate is the window's over one round's latency, not one batch per round trip. The batch the
        builder reads next goes in a round of its own, so it never waits for the batches after it; a round holds
        at most `window` batches' packs in memory (the widened window; cache_limit=None leaves that unbounded
        only by the window's cap)."""
        stop = threading.Event()
        limit = self.run.cache_limit
        with self._lock:
            base = self._ahead_from = self.reads
            self._ahead_token = token = object()
            self._window_cap = max(window, 8 * window if widen_to is None else widen_to)
            self.window = min(max(window, self.window), self._window_cap)  # what an earlier epoch learned stays
        queue = ((step, np.unique(packs[packs >= 0])) for step, packs in enumerate(batches))

        def work() -> None:
            try:
                fetch_ahead()
            finally:
                with self._lock:
                    if self._ahead_token is token:
                        # this read-ahead is over: the builder fetches alone from here
                        self._ahead_token = self._ahead_from = None

        def fetch_ahead() -> None:
            pending = next(queue, None)
            while pending is not None:
                group: list[tuple[int, np.ndarray]] = []
                wanted = 0  # bytes of the group's packs not held yet
                with self._lock:
                    while pending is not None and not stop.is_set():
                        step, packs = pending
                        done = self.reads - base
                        if step < done:  # the builder got there first
                            pending = next(queue, None)
                            continue
                        todo = int(self.pack_bytes[packs[~self.present[packs]]].sum())
                        room = limit is None or self._ahead_bytes() + self._inflight_bytes + wanted + todo <= \
                            limit - reserve
                        if step - done < self.window and room:
                            group.append(pending)
                            wanted += todo
                            pending = next(queue, None)
                            if step == done:
                                break  # the batch the builder needs now goes alone: it never waits for others
                        elif group:
                            break  # fetch what is in hand first
                        else:
                            self._room.wait(0.5)
                    if stop.is_set():
                        return
                if not group:
                    return
                try:
                    n, seconds = self._fetch_claimed(np.unique(np.concatenate([packs for _, packs in group])),
                                                     ahead=True)
                except Exception:
                    return  # the builder fetches these itself and reports the error where it is seen
                with self._lock:
                    if n:
                        (self._rounds_one if len(group) == 1 else self._rounds_many).append((n, seconds))
                    for step, packs in group:
                        for p in packs.tolist():
                            if self.present[p] and p not in self._consumed:
                                self._ahead[p] = step

        threading.Thread(target=work, daemon=True, name="packer-read-ahead").start()
        return stop

    def stats(self) -> dict:
        """bytes_fetched (heads included), requests, bytes_of_packs_read, bytes held now, and of those the bytes
        of packs fetched ahead for batches not read yet (bytes_ahead); bytes_in_flight: packs being fetched now;
        read_ahead_window (batches; it widens while builder_waits, the batches not fetched in time, grow)."""
        with self._lock:
            return {"bytes_fetched": self.run.bytes_fetched, "requests": self.run.requests,
                    "bytes_of_packs_read": self.bytes_of_packs_read, "bytes_held": self.held,
                    "bytes_ahead": self._ahead_bytes(), "bytes_in_flight": self._inflight_bytes,
                    "read_ahead_window": self.window, "builder_waits": self.builder_waits}

    def _ahead_bytes(self) -> int:
        """Bytes of the packs held for the read-ahead's coming batches (each held: _drop forgets it)."""
        return int(self.pack_bytes[list(self._ahead)].sum()) if self._ahead else 0


__all__ = ["DEFAULT_CACHE_LIMIT", "RangeReader", "RemoteRun"]
