"""The compiled batch kernel against the numpy reference, and the buffer pool's safety."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from packer.train.collate import BatchSource, collate
from packer.core.errors import FormatError
from packer.core.labels import IGNORE, make_labels, positions
from packer.core.formats.shards import Shard


def make_shard(rng: np.random.Generator, pack_len: int, packs: int, dtype: type) -> Shard:
    """A shard in memory: packs of random segments (length-1 ones included), random masks, ids near the dtype's top."""
    seg_lens, pack_seg, pack_tok = [], [0], [0]
    for _ in range(packs):
        room = int(rng.integers(1, pack_len + 1))
        while room:
            n = int(rng.integers(1, room + 1)) if rng.random() < 0.7 else 1
            seg_lens.append(n)
            room -= n
        pack_seg.append(len(seg_lens))
        pack_tok.append(pack_tok[-1] + sum(seg_lens[pack_seg[-2]:]))
    T = pack_tok[-1]
    top = np.iinfo(dtype).max
    arrays = {
        "tokens": rng.integers(top - 1000, top, size=T, endpoint=True).astype(dtype),
        "loss_mask": (rng.random(T) < 0.6).astype(np.uint8),
        "pack_token_offsets": np.asarray(pack_tok, np.int64),
        "pack_segment_offsets": np.asarray(pack_seg, np.int64),
        "segment_lengths": np.asarray(seg_lens, np.int32),
        "segment_example": np.arange(len(seg_lens), dtype=np.int64),
        "segment_start": np.zeros(len(seg_lens), np.int32),
        "segment_role": np.zeros(len(seg_lens), np.uint8),
        "pack_labels": np.zeros(len(pack_tok) - 1, np.int64),  # not read by the kernel
        "pack_tokens_xxh3": np.zeros(len(pack_tok) - 1, np.uint64),
        "pack_mask_xxh3": np.zeros(len(pack_tok) - 1, np.uint64),
    }
    for a in arrays.values():
        a.flags.writeable = False  # as the memory maps are
    return Shard(path="mem", pack_len=pack_len, **arrays)


def reference(shards: list[Shard], packs: list[int], pack_len: int, flatten: bool, pad_id: int, mode: str) -> dict:
    """The batch built pack by pack with the numpy definitions in packer.core.labels."""
    where = [(s, j) for s in shards for j in range(s.num_packs)]
    ids, labels, pos, segs, real = [], [], [], [], 0
    for p in packs:
        sh, j = where[p]
        a, b = sh.pack_token_offsets[j], sh.pack_token_offsets[j + 1]
        seg = sh.segment_lengths[sh.pack_segment_offsets[j]:sh.pack_segment_offsets[j + 1]].astype(np.int64)
        cu = np.concatenate([[0], np.cumsum(seg)])
        tok = sh.tokens[a:b].astype(np.int64)
        real += len(tok)
        row = [tok, make_labels(tok, sh.loss_mask[a:b], cu, mode), positions(seg, cu)]
        pad = 0 if flatten else pack_len - len(tok)
        if pad:
            row = [np.concatenate([row[0], np.full(pad, pad_id)]), np.concatenate([row[1], np.full(pad, IGNORE)]),
                   np.concatenate([row[2], np.arange(pad)])]
            seg = np.append(seg, pad)
        for out, x in zip((ids, labels, pos), row, strict=True):
            out.append(x)
        segs.append(seg)
    seg_all = np.concatenate(segs) if segs else np.zeros(0, np.int64)
    return {"input_ids": np.concatenate(ids), "labels": np.concatenate(labels), "position_ids": np.concatenate(pos),
            "seq_lens": seg_all, "cu_seqlens": np.concatenate([[0], np.cumsum(seg_all)]), "num_tokens": real}


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_shards=st.integers(1, 3), pack_len=st.integers(1, 64),
       dtype=st.sampled_from([np.uint16, np.uint32]), flatten=st.booleans(),
       mode=st.sampled_from(["unshifted", "shifted"]), batch=st.integers(1, 6), compiled=st.booleans())
def test_kernel_equals_numpy_reference(seed, n_shards, pack_len, dtype, flatten, mode, batch, compiled):
    """Both paths: the compiled kernel, and the numpy one collate takes while the kernels still load."""
    import packer.train.collate as module

    rng = np.random.default_rng(seed)
    shards = [make_shard(rng, pack_len, int(rng.integers(1, 5)), dtype) for _ in range(n_shards)]
    total = sum(s.num_packs for s in shards)
    packs = rng.integers(0, total, size=batch)  # repeats allowed, as drop_last=False makes them
    ready, module._kernels_ready = module._kernels_ready, lambda like: compiled
    try:
        got = collate(BatchSource.from_shards(shards, pack_len), packs, flatten=flatten, pad_id=7, label_mode=mode)
    finally:
        module._kernels_ready = ready
    want = reference(shards, packs.tolist(), pack_len, flatten, 7, mode)
    T = len(want["input_ids"])
    shape = (1, T) if flatten else (batch, pack_len)
    for key in ("input_ids", "labels", "position_ids"):
        assert got[key].dtype == torch.int64 and tuple(got[key].shape) == shape
        assert np.array_equal(got[key].numpy().reshape(-1), want[key]), key
    for key in ("cu_seqlens", "seq_lens"):
        assert got[key].dtype == torch.int32 and np.array_equal(got[key].numpy(), want[key]), key
    assert got["num_loss_tokens"] == int((want["labels"] != IGNORE).sum())
    assert got["max_seqlen"] == int(want["seq_lens"].max())
    assert got["num_tokens"] == want["num_tokens"]
    assert got["pack_index"].tolist() == packs.tolist()


@pytest.fixture
def source():
    rng = np.random.default_rng(0)
    return BatchSource.from_shards([make_shard(rng, 512, 40, np.uint16)], 512)


def test_a_batch_still_held_is_never_overwritten(source):
    held = collate(source, np.arange(4))
    row = held["labels"][1]  # a view that outlives its batch dict
    copies = {k: v.clone() for k, v in held.items() if isinstance(v, torch.Tensor)}
    row_copy = row.clone()
    del held
    gc.collect()
    for i in range(20):  # the pool now hands buffers out again; none may be the one `row` sees
        collate(source, np.arange(4, 8) + i)
    assert torch.equal(row, row_copy)
    again = collate(source, np.arange(4))
    assert all(torch.equal(again[k], v) for k, v in copies.items())


def test_a_dropped_batch_buffer_is_reused(source):
    first = collate(source, np.arange(4))
    ptr = first["input_ids"].data_ptr()
    del first
    assert collate(source, np.arange(4, 8))["input_ids"].data_ptr() == ptr


def test_shared_memory_batch_is_one_storage(source):
    b = collate(source, np.arange(3), share_memory=True)
    storages = {v.untyped_storage().data_ptr() for v in b.values() if isinstance(v, torch.Tensor)}
    assert len(storages) == 1 and b["input_ids"].is_shared()
    assert torch.equal(b["labels"], collate(source, np.arange(3))["labels"])


def test_bad_pack_index_and_label_mode(source):
    with pytest.raises(IndexError, match="pack index out of range"):
        collate(source, np.array([0, 40]))
    with pytest.raises(IndexError):
        collate(source, np.array([-1]))
    with pytest.raises(Exception, match="label_mode 'x'"):
        collate(source, np.arange(2), label_mode="x")


def test_arrays_the_kernel_cannot_address_are_refused():
    rng = np.random.default_rng(1)
    good = make_shard(rng, 64, 4, np.uint16)
    BatchSource.from_shards([good], 64)
    for field, bad in (("tokens", good.tokens.astype(np.float32)), ("tokens", np.repeat(good.tokens, 2)[::2]),
                       ("loss_mask", good.loss_mask[:-1])):
        shard = Shard(**{**{k: getattr(good, k) for k in good.__dataclass_fields__}, field: bad})
        with pytest.raises(FormatError, match="wrong type, length or layout"):
            BatchSource.from_shards([shard], 64)


def test_warming_the_kernels_runs_once_per_dtype_and_a_fork_waits_for_it(monkeypatch):
    """collate.warm loads a dtype's kernels in a background thread, once per process; a fork joins it first (so no
    child inherits a half-held compiler lock) and the child builds a batch."""
    import os
    import time

    from packer.train import collate as K

    real, fill = K.collate, K._fill

    def slow(*a, **k):  # a warm-up still running when the fork comes
        time.sleep(0.5)
        return fill(*a, **k)

    monkeypatch.setattr(K, "_fill", slow)
    monkeypatch.setattr(K, "_WARM", {})
    K.warm(np.uint32)
    thread = K._WARM[np.dtype(np.uint32).str]
    K.warm(np.uint32)
    assert K._WARM[np.dtype(np.uint32).str] is thread
    K.warm(np.uint8)  # not a token dtype: nothing
    assert np.dtype(np.uint8).str not in K._WARM
    assert thread.is_alive()
    pid = os.fork()
    if pid == 0:  # the child: the thread was joined before the fork
        src = K.BatchSource(tokens=[np.arange(4, dtype=np.uint32)], masks=[np.ones(4, np.uint8)],
                            seg_lens=[np.array([4], np.int32)], pack_table=np.array([[0, 0, 4, 0, 1]]), pack_len=4)
        ok = real(src, np.zeros(1, np.int64))["input_ids"].tolist() == [[0, 1, 2, 3]]
        os._exit(0 if ok else 1)
    assert not thread.is_alive(), "the fork did not wait for the warm-up"
    assert os.waitpid(pid, 0)[1] == 0


def test_warm_loads_the_compiled_kernels_and_a_forked_child_is_never_left_deferred():
    """warm() must load the kernels themselves (not take collate's numpy path while it runs), and a deferral
    made before a fork (a streamed loader's, then DataLoader workers) does not hold a child on numpy."""
    import subprocess
    import sys

    code = """
import multiprocessing as mp, numpy as np
from packer.train import collate as C
C.defer(np.uint32)
def child(q):
    q.put(sorted(C._DEFERRED))
if __name__ == "__main__":
    q = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=child, args=(q,))
    p.start(); p.join()
    print("child deferred", q.get())
    C.warm(np.uint16)
    C._WARM[np.dtype(np.uint16).str].join()
    print("signatures", len(C._fill.signatures), len(C._sizes.signatures))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "child deferred []" in out.stdout, out.stdout
    fill, sizes = (int(x) for x in out.stdout.split("signatures")[1].split())
    assert fill >= 1 and sizes >= 1, out.stdout
