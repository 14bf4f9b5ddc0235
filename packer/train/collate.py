"""Build one batch from pack indices: a compiled single pass from the memory maps into one buffer.

A padded batch of 2 packs at pack_len 6 (segments a a a | b b in row 0, c c c c in row 1)::

    input_ids     a a a b b P        P = pad_id
                  c c c c P P
    position_ids  0 1 2 0 1 0        padding is its own segment per row, so the batch flattened to
                  0 1 2 3 0 1        [B * pack_len] is valid varlen input as it is:
    cu_seqlens    [0, 3, 5, 6, 10, 12]   (int32, over the flattened rows)
    labels        -100 on padding, on every segment's first token (unshifted) or last (shifted),
                  and wherever the pack has no loss

flatten gives one row [1, total_tokens] with no padding at all (positions restart per example).

Why compiled: with numpy the batch costs one pass per output array plus temporaries (~75 us for
[8, 4096]); the numba kernel reads each token and mask byte once and writes input_ids, labels and
position_ids in the same loop: a [8, 4096] batch costs about twice a memcpy of its bytes (0.5-0.6
of memcpy's throughput, benchmarks/bench_loader.py). Besides the pass, a batch costs ~15-20 us whatever
its size: two kernel calls (~1 us each: the shards are passed as tables of addresses), the buffer
from the pool (one reference count per buffer), numpy views and six torch.from_numpy. Every array of a batch
lives in one buffer, so pinning it, or handing it from a worker process, is one operation, not seven.
The numpy definitions in `packer.core.labels` (make_labels, positions) are the reference the tests hold
this kernel to.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field

import numba
import numpy as np
import torch
from numba.core import types
from numba.extending import intrinsic

from packer.core.errors import REBUILD_HINT, FormatError
from packer.core.labels import IGNORE, check_label_mode
from packer.core.formats.shards import check_values


@numba.njit(cache=True, nogil=True)
def _segment(tok, msk, ids, lab, pos, shifted):  # pragma: no cover - compiled
    """One segment: ids = tokens, positions 0..n-1, labels per mode; returns (labelled positions,
    largest token id, OR of the mask bytes): the caller checks ids against the vocabulary and mask
    bytes against {0, 1} once per batch, in the same pass as the copy."""
    n = len(tok)
    if n == 0:
        return 0, np.int64(0), np.int64(0)
    top = np.int64(0)
    bits = np.int64(0)
    for j in range(n):
        t = np.int64(tok[j])
        ids[j] = t
        pos[j] = j
        top = max(top, t)
        bits |= np.int64(msk[j])
    count = 0
    if shifted:  # lab[j] = tok[j+1] where mask[j+1], the last token predicts nothing
        for j in range(n - 1):
            m = np.int64(msk[j + 1])
            lab[j] = m * (np.int64(tok[j + 1]) - IGNORE) + IGNORE
            count += m
        lab[n - 1] = IGNORE
    else:  # lab[j] = tok[j] where mask[j], never on the first token
        for j in range(1, n):
            m = np.int64(msk[j])
            lab[j] = m * (np.int64(tok[j]) - IGNORE) + IGNORE
            count += m
        lab[0] = IGNORE
    return count, top, bits


_U8, _I32 = np.zeros(0, np.uint8), np.zeros(0, np.int32)  # element types of loss masks and segment lengths


@intrinsic
def _pointer(typingctx, address, like):  # pragma: no cover - compiled
    """A typed pointer (to elements of `like`'s dtype) from an address in the shard table."""
    sig = types.CPointer(like.dtype)(types.int64, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def _sizes(pack_table, packs, row_len):  # pragma: no cover - compiled
    """(T, K, real): token slots of the batch, a bound on its segments, and its real tokens."""
    T = 0
    K = 0
    for r in range(len(packs)):
        p = packs[r]
        if p < 0 or p >= len(pack_table):
            raise IndexError("pack index out of range")
        K += pack_table[p, 4] - pack_table[p, 3]
        n = pack_table[p, 2] - pack_table[p, 1]
        if row_len > 0 and n > row_len:
            raise IndexError("a pack is longer than the row length")
        T += n
    real = T
    if row_len > 0:
        K += len(packs)  # at most one padding segment per row
        T = len(packs) * row_len
    return T, K, real


@numba.njit(cache=True, nogil=True)
def _fill(shard_table, token_like, pack_table, packs, row_len, pad_id, shifted, buf, T, K):  # pragma: no cover
    """The whole batch into `buf` (int64, at least 3T + B + K + 1; layout in `collate`).

    Returns (k segments, labelled positions, longest segment, largest token id, OR of mask bytes).
    """
    B = len(packs)
    ids, lab, pos = buf[:T], buf[T:2 * T], buf[2 * T:3 * T]
    buf[3 * T:3 * T + B] = packs
    tail = buf[3 * T + B:3 * T + B + K + 1].view(np.int32)  # cu_seqlens [K+1], then seq_lens [K]
    cu, seq = tail[:K + 1], tail[K + 1:2 * K + 1]
    cu[0] = 0
    k, o, loss, longest = 0, 0, 0, 0
    top = np.int64(0)
    bits = np.int64(0)
    for r in range(B):
        p = packs[r]
        s = pack_table[p, 0]
        n_tok = shard_table[s, 1]
        tok = numba.carray(_pointer(shard_table[s, 0], token_like), n_tok)
        msk = numba.carray(_pointer(shard_table[s, 2], _U8), n_tok)
        sl = numba.carray(_pointer(shard_table[s, 3], _I32), shard_table[s, 4])
        a = pack_table[p, 1]
        row_start = o
        for q in range(pack_table[p, 3], pack_table[p, 4]):
            n = np.int64(sl[q])
            c, t, b = _segment(tok[a:a + n], msk[a:a + n], ids[o:o + n], lab[o:o + n], pos[o:o + n], shifted)
            loss += c
            top = max(top, t)
            bits |= b
            a += n
            o += n
            seq[k] = n
            k += 1
            cu[k] = o
            longest = max(longest, n)
        n = row_start + row_len - o
        if n > 0:  # padding: its own segment, never labelled
            ids[o:o + n] = pad_id
            lab[o:o + n] = IGNORE
            p_row = pos[o:o + n]
            for j in range(n):
                p_row[j] = j
            o += n
            seq[k] = n
            k += 1
            cu[k] = o
            longest = max(longest, n)
    return k, loss, longest, top, bits


def _sizes_numpy(pack_table: np.ndarray, packs: np.ndarray, row_len: int) -> tuple[int, int, int]:
    """_sizes without the compiled kernel (the same result and errors)."""
    if len(packs) and (packs.min() < 0 or packs.max() >= len(pack_table)):
        raise IndexError("pack index out of range")
    rows = pack_table[packs]
    n = rows[:, 2] - rows[:, 1]
    if row_len > 0 and len(n) and n.max() > row_len:
        raise IndexError("a pack is longer than the row length")
    real = int(n.sum())
    K = int((rows[:, 4] - rows[:, 3]).sum())
    if row_len > 0:
        return len(packs) * row_len, K + len(packs), real
    return real, K, real


def _fill_numpy(src: BatchSource, packs: np.ndarray, row_len: int, pad_id: int, shifted: bool, buf: np.ndarray,
                T: int, K: int) -> tuple[int, int, int, int, int]:
    """_fill without the compiled kernel: the same bytes into `buf` and the same results, pack by pack with
    numpy. Used while the kernels are still loading in the background (the first batches of a process), so
    a first batch never waits ~0.3 s of CPU for them."""
    B = len(packs)
    ids, lab, pos = buf[:T], buf[T:2 * T], buf[2 * T:3 * T]
    buf[3 * T:3 * T + B] = packs
    tail = buf[3 * T + B:3 * T + B + K + 1].view(np.int32)
    cu, seq = tail[:K + 1], tail[K + 1:2 * K + 1]
    cu[0] = 0
    k = o = loss = longest = top = bits = 0
    for p in packs.tolist():
        s, a, b, q0, q1 = (int(x) for x in src.pack_table[p])
        segs = np.asarray(src.seg_lens[s][q0:q1], np.int64)
        if b - a != int(segs.sum()) or (segs < 0).any():
            raise IndexError("segment lengths do not add up to the pack's tokens")
        row_start, n = o, b - a
        tok = src.tokens[s][a:b].astype(np.int64)
        msk = src.masks[s][a:b].astype(np.int64)
        starts = np.cumsum(segs) - segs  # each segment's first token, within the pack
        live = segs > 0
        ids[o:o + n] = tok
        pos[o:o + n] = np.arange(n) - np.repeat(starts, segs)
        out = lab[o:o + n]
        if shifted:  # lab[j] = tok[j+1] where mask[j+1]; each segment's last token predicts nothing
            out[:-1] = msk[1:] * (tok[1:] - IGNORE) + IGNORE
            out[(starts + segs - 1)[live]] = IGNORE
        else:  # lab[j] = tok[j] where mask[j]; never a segment's first token
            out[:] = msk * (tok - IGNORE) + IGNORE
            out[starts[live]] = IGNORE
        loss += int(msk.sum() - msk[starts[live]].sum())
        if n:
            top, bits = max(top, int(tok.max())), bits | int(np.bitwise_or.reduce(msk))
        m = len(segs)
        seq[k:k + m] = segs
        cu[k + 1:k + 1 + m] = o + np.cumsum(segs)
        k, o = k + m, o + n
        longest = max(longest, int(segs.max()) if m else 0)
        pad = row_start + row_len - o
        if pad > 0:  # padding: its own segment, never labelled
            ids[o:o + pad] = pad_id
            lab[o:o + pad] = IGNORE
            pos[o:o + pad] = np.arange(pad)
            o += pad
            seq[k] = pad
            k += 1
            cu[k] = o
            longest = max(longest, pad)
    return k, loss, longest, top, bits


def _kernels_ready(token_like: np.ndarray) -> bool:
    """Whether this process's kernels for this token dtype are loaded. The first call that finds no load under
    way starts one (warm) and says False, unless the load was deferred (defer): collate takes the numpy path until
    the background load is done, so no batch waits for it."""
    key = token_like.dtype.str
    thread = _WARM.get(key)
    if thread is None and key in _DEFERRED:
        return False
    if thread is None:
        warm(token_like.dtype)
        thread = _WARM.get(key)
    return thread is None or not thread.is_alive()


class BufferPool:
    """Batch buffers handed out again once nothing can see them.

    Why: `for batch in loader` keeps the last batch alive while the next is built, and a fresh
    0.8 MB allocation then often comes from memory the allocator has just returned to the OS, so
    every page faults and the batch costs 2-3x. A buffer is free when nothing but the pool refers to
    it: every numpy view of it refers to it (numpy keeps the buffer as the views' base), and every
    tensor made from a view keeps that view alive, so a reference count of the pool's own is proof that
    no tensor, view or copy-free export of the batch is alive. One count per buffer: no weak references
    to make per batch, nor to clear when it is freed.
    """

    def __init__(self, keep: int = 8):
        self.keep = keep
        self._buffers: list[np.ndarray] = []  # in use or free; the oldest first
        self._lock = threading.Lock()  # a prefetch thread and the caller may both build batches
        probe = [np.empty(1, np.int64)]
        self._free = sys.getrefcount(probe[0])  # a buffer only the list refers to, counted as `get` counts

    def get(self, n: int) -> np.ndarray:
        """int64 [>= n], free for writing; it stays the pool's (up to `keep` buffers) to hand out again."""
        with self._lock:
            bufs = self._buffers
            for i in range(len(bufs)):
                # any view of the buffer (or a caller holding it) adds one to the list's own reference
                if sys.getrefcount(bufs[i]) == self._free and len(bufs[i]) >= n:
                    return bufs[i]
            buf = np.empty(max(n, 1), np.int64)
            bufs.append(buf)
            if len(bufs) > self.keep:
                bufs.pop(0)  # forgotten by the pool; it lives on as long as its views do
            return buf


@dataclass
class BatchSource:
    """What the kernel reads, gathered once per process: per-shard arrays and per-pack offsets.

    pack_table int64 [P, 5], per global pack: its shard, its token range [a, b) in that shard and its
    segment range [a, b) there. The kernel gets the shards as a table of addresses (shard_table int64
    [S, 5]: tokens' address and count, the loss mask's address, segment lengths' address and count). Why not numba typed Lists of the
    arrays: building them compiles list code in every process (~1.1 s before the first batch, in every
    DataLoader worker too) and unboxing them costs ~2.5 us a call each. The addresses stay valid
    because this object holds the arrays; the ranges were checked against the shards' sizes when they
    were opened (packer.core.formats.shards.check_shard).
    """

    tokens: list[np.ndarray]
    masks: list[np.ndarray]
    seg_lens: list[np.ndarray]
    pack_table: np.ndarray
    pack_len: int
    vocab_size: int = 2**32
    paths: tuple[str, ...] = ()
    pool: BufferPool = field(default_factory=BufferPool)
    shard_table: np.ndarray = field(init=False, repr=False)
    token_like: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for i, (t, m, sl) in enumerate(zip(self.tokens, self.masks, self.seg_lens)):
            if (t.dtype not in (np.uint16, np.uint32) or m.dtype != np.uint8 or sl.dtype != np.int32 or len(m) != len(t)
                    or not (t.flags.c_contiguous and m.flags.c_contiguous and sl.flags.c_contiguous)):
                raise FormatError(self.paths[i] if self.paths else f"shard {i}", "token, mask or segment arrays of the "
                                  "wrong type, length or layout", REBUILD_HINT)
        dtypes = {t.dtype for t in self.tokens}
        if len(dtypes) > 1:
            raise FormatError(self.paths[0] if self.paths else "shards", "shards mix token widths", REBUILD_HINT)
        self.token_like = np.zeros(0, dtypes.pop() if dtypes else np.uint16)
        self.shard_table = np.array([[t.ctypes.data, len(t), m.ctypes.data, sl.ctypes.data, len(sl)]
                                     for t, m, sl in zip(self.tokens, self.masks, self.seg_lens)],
                                    np.int64).reshape(-1, 5)
        self.pack_table = np.ascontiguousarray(self.pack_table, np.int64).reshape(-1, 5)

    @classmethod
    def from_shards(cls, shards: list, pack_len: int, keep: int = 8, vocab_size: int = 2**32) -> BatchSource:
        """From the shards' memory maps (no copies of tokens or masks); `keep` buffers are pooled.

        The shards must have passed packer.core.formats.shards.check_shard: the kernel follows their offsets.
        """
        nonempty = [s for s in shards if s.num_packs]

        def ranges(offsets: list[np.ndarray]) -> np.ndarray:
            if not offsets:
                return np.zeros((0, 2), np.int64)
            return np.concatenate([np.stack([o[:-1], o[1:]], axis=1) for o in offsets]).astype(np.int64)

        return cls(
            tokens=[s.tokens for s in nonempty],
            masks=[s.loss_mask for s in nonempty],
            seg_lens=[s.segment_lengths for s in nonempty],
            pack_table=np.column_stack([
                np.repeat(np.arange(len(nonempty), dtype=np.int64), [s.num_packs for s in nonempty]),
                ranges([s.pack_token_offsets for s in nonempty]), ranges([s.pack_segment_offsets for s in nonempty])]),
            pack_len=pack_len,
            vocab_size=vocab_size,
            paths=tuple(s.path for s in nonempty),
            pool=BufferPool(keep),
        )


def _refuse_values(src: BatchSource, packs: np.ndarray, top: int, bits: int) -> None:
    """Name the first pack of the batch whose tokens or mask bytes are out of range."""
    for p in packs.tolist():
        shard, a, b = (int(x) for x in src.pack_table[p, :3])
        check_values(src.tokens[shard][a:b], src.masks[shard][a:b], src.vocab_size,
                     src.paths[shard] if src.paths else f"shard {shard}", p)
    raise FormatError(src.paths[0] if src.paths else "shards", f"token id {top} or mask bits {bits} out of range",
                      REBUILD_HINT)


def _parts(whole, tail, T: int, B: int, K: int, k: int, shape: tuple[int, int]) -> list:
    """ids, labels, positions, cu_seqlens, seq_lens, pack_index as views of the batch buffer `whole`
    (numpy or torch alike); `tail` is its int32 view after pack_index."""
    return [whole[:T].reshape(shape), whole[T:2 * T].reshape(shape), whole[2 * T:3 * T].reshape(shape),
            tail[:k + 1], tail[K + 1:K + 1 + k], whole[3 * T:3 * T + B]]


_WARM: dict[str, threading.Thread] = {}  # token dtype -> the thread loading its kernels in this process
_DEFERRED: set[str] = set()  # token dtypes whose load waits for warm() (collate takes the numpy path meanwhile)


def defer(token_dtype) -> None:
    """Hold the kernels' load for `token_dtype` back until warm() is called: a streamed run's first batch is built
    by numpy while its packs are fetched, instead of sharing the process with ~0.3 s of compiler work."""
    key = np.dtype(token_dtype).str
    if key not in _WARM:
        _DEFERRED.add(key)


def warm(token_dtype) -> None:
    """Load the compiled kernels for shards of `token_dtype` now, in a background thread: the first batch of a
    process otherwise spends ~0.3 s loading them from numba's cache (benchmarks: 0.34 s first batch against 0.02 s
    for the next); collate builds batches with numpy until it is done. A loader of a local run starts it when it
    opens, overlapping the caller's own setup (building the model); a streamed run's loader defers it (defer) until
    its first batch is built, so that fetch does not share the process with it. A fork waits for it (os.register_at_fork), so no child inherits a half-held
    compiler lock."""
    key = np.dtype(token_dtype).str
    _DEFERRED.discard(key)
    if key in _WARM or np.dtype(token_dtype) not in (np.uint16, np.uint32):
        return

    def run() -> None:
        try:
            src = BatchSource(tokens=[np.zeros(2, token_dtype)], masks=[np.zeros(2, np.uint8)],
                              seg_lens=[np.array([2], np.int32)], pack_table=np.array([[0, 0, 2, 0, 1]]), pack_len=2)
            packs = np.zeros(1, np.int64)  # the kernels themselves: collate would take the numpy path meanwhile
            T, K, _ = _sizes(src.pack_table, packs, 0)
            _fill(src.shard_table, src.token_like, src.pack_table, packs, 0, 0, False, np.empty(3 * T + K + 2, np.int64),
                  T, K)
        except Exception:  # noqa: BLE001  (the first real batch loads them itself and reports what fails)
            pass

    _WARM[key] = thread = threading.Thread(target=run, daemon=True, name=f"packer-kernel-{key}")
    thread.start()


def _before_fork() -> None:
    for thread in list(_WARM.values()):
        if thread.is_alive() and thread is not threading.current_thread():
            thread.join()


if hasattr(os, "register_at_fork"):  # a child never inherits a deferral: it loads on its first batch
    os.register_at_fork(before=_before_fork, after_in_child=_DEFERRED.clear)


def collate(src: BatchSource, packs: np.ndarray, *, flatten: bool = False, pad_id: int = 0,
            label_mode: str = "unshifted", pin_memory: bool = False, share_memory: bool = False) -> dict:
    """One batch of the packs `packs` (int64 [B], global pack indices).

    Returns input_ids, labels, position_ids int64 [B, pack_len] (or [1, T] with flatten), cu_seqlens
    int32 [K+1], seq_lens int32 [K], max_seqlen, num_loss_tokens, num_tokens (real tokens) and
    pack_index int64 [B]. All tensors are views of one buffer:
    ``[ids T | labels T | positions T | pack_index B | int32: cu_seqlens, seq_lens]``.

    pin_memory: the buffer is copied once into pinned memory. share_memory: the batch is built in
    shared memory as one torch storage, so a DataLoader worker hands it over without a copy.
    """
    check_label_mode(label_mode)
    packs = np.ascontiguousarray(packs, dtype=np.int64)
    row_len = 0 if flatten else src.pack_len
    compiled = _kernels_ready(src.token_like)
    T, K, real = (_sizes if compiled else _sizes_numpy)(src.pack_table, packs, row_len)
    B = len(packs)
    n = 3 * T + B + K + 1
    if share_memory:
        whole = torch.empty(n, dtype=torch.int64).share_memory_()
        buf = whole.numpy()
    else:
        buf = src.pool.get(n)
    if compiled:
        k, loss, longest, top, bits = _fill(src.shard_table, src.token_like, src.pack_table, packs, row_len, pad_id,
                                            label_mode == "shifted", buf, T, K)
    else:
        k, loss, longest, top, bits = _fill_numpy(src, packs, row_len, pad_id, label_mode == "shifted", buf, T, K)
    if top >= src.vocab_size or bits > 1:
        _refuse_values(src, packs, top, bits)
    shape = (1, T) if flatten else (B, row_len)
    if pin_memory:  # one copy of the whole buffer into pinned memory
        whole = torch.from_numpy(buf[:n]).pin_memory()
    if pin_memory or share_memory:  # torch views of one storage
        tensors = _parts(whole, whole[3 * T + B:n].view(torch.int32), T, B, K, k, shape)
    else:
        views = _parts(buf, buf[3 * T + B:n].view(np.int32), T, B, K, k, shape)
        # numpy slicing, then one torch.from_numpy each: half the cost of slicing torch tensors
        tensors = [torch.from_numpy(v) for v in views]
    ids, labels, pos, cu, seq, index = tensors
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": pos,
        "cu_seqlens": cu,
        "seq_lens": seq,
        "max_seqlen": int(longest),
        "num_loss_tokens": int(loss),
        "num_tokens": int(real),
        "pack_index": index,
    }
