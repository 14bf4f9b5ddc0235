"""Context parallelism on CPU: the load-balanced split over N gloo processes, with a reference CP
attention (all-gather of K/V), gives the outputs and gradients of single-process varlen attention over
the whole pack (fp64, 1e-10), for N = 2 and 4, with GQA and segments shorter than 2N; and Ulysses-style
sequence parallelism (heads exchanged; the exchange is done with an autograd all-gather) likewise."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.multiprocessing as mp
from hypothesis import given, settings, strategies as st

from packer.train.attention import varlen_attention
from packer.core.context_parallel import causal_work, check_cp_size, cp_indices, padded_lengths, ulysses_slice
from packer.core.errors import ConfigError

pytestmark = pytest.mark.slow
LENGTHS = [1, 3, 17, 6, 30, 2, 9]  # several shorter than 2N for N = 2 and 4
HQ, HKV, D = 8, 4, 8


def _data(lengths, cp_size):
    g = torch.Generator().manual_seed(7)
    pad = padded_lengths(np.array(lengths), cp_size)
    cu_pad = np.concatenate([[0], np.cumsum(pad)])
    T = int(cu_pad[-1])
    q, k, v, w = (torch.randn(T, h, D, generator=g, dtype=torch.float64) for h in (HQ, HKV, HKV, HQ))
    real = np.concatenate([np.arange(a, a + n) for a, n in zip(cu_pad[:-1], lengths)])
    return cu_pad, q, k, v, w, real


def _single(lengths, cp_size):
    """Varlen attention over the unpadded pack, one process: outputs and gradients at the real tokens."""
    cu_pad, q, k, v, w, real = _data(lengths, cp_size)
    qr, kr, vr = (t[real].clone().requires_grad_() for t in (q, k, v))
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
    out = varlen_attention(qr, kr, vr, cu, max(lengths), backend="sdpa")
    (out * w[real]).sum().backward()
    return out.detach(), qr.grad, kr.grad, vr.grad, real


def _gather(x):
    return torch.cat(dist_fn.all_gather(x), 0)


def _cp_worker(rank, world, port, lengths, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cu_pad, q, k, v, w, real = _data(lengths, world)
    idx = cp_indices(cu_pad, rank, world)
    ql, kl, vl = (t[torch.from_numpy(idx)].clone().requires_grad_() for t in (q, k, v))
    # Reference CP attention: every rank gathers all K/V, puts them in pack order and attends its queries.
    all_idx = torch.from_numpy(np.concatenate([cp_indices(cu_pad, r, world) for r in range(world)]))
    order = torch.argsort(all_idx)
    K, V = _gather(kl)[order], _gather(vl)[order]
    seg = torch.from_numpy(np.repeat(np.arange(len(lengths)), np.diff(cu_pad)))
    pos = torch.arange(len(seg))
    qi = torch.from_numpy(idx)
    allowed = (seg[qi][:, None] == seg[None, :]) & (pos[None, :] <= qi[:, None])
    Kq, Vq = K.repeat_interleave(HQ // HKV, 1), V.repeat_interleave(HQ // HKV, 1)
    scores = torch.einsum("qhd,khd->hqk", ql, Kq) / D ** 0.5
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    out = torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), Vq)
    is_real = torch.from_numpy(np.isin(idx, real))
    (out * w[qi] * is_real[:, None, None]).sum().backward()
    torch.save({"idx": idx, "out": out.detach(), "gq": ql.grad, "gk": kl.grad, "gv": vl.grad}, f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def _ulysses_worker(rank, world, port, lengths, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cu_pad, q, k, v, w, real = _data(lengths, world)  # the pack: padded so its length divides by world
    T = int(cu_pad[-1])
    sl = ulysses_slice(T, rank, world)
    ql, kl, vl = (t[sl].clone().requires_grad_() for t in (q, k, v))
    # Sequence -> heads: every rank gets the whole sequence for its share of the heads.
    hq, hk = HQ // world, HKV // world
    Q = _gather(ql)[:, rank * hq:(rank + 1) * hq]
    K = _gather(kl)[:, rank * hk:(rank + 1) * hk]
    V = _gather(vl)[:, rank * hk:(rank + 1) * hk]
    cu = torch.tensor(cu_pad, dtype=torch.int32)
    o = varlen_attention(Q, K, V, cu, int(np.diff(cu_pad).max()), backend="sdpa")
    # Heads -> sequence: every rank takes its tokens of all heads back.
    out = torch.cat(dist_fn.all_gather(o), 1)[sl]
    is_real = torch.from_numpy(np.isin(np.arange(T)[sl], real))
    (out * w[sl] * is_real[:, None, None]).sum().backward()
    torch.save({"idx": np.arange(T)[sl], "out": out.detach(), "gq": ql.grad, "gk": kl.grad, "gv": vl.grad},
               f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("worker", [_cp_worker, _ulysses_worker], ids=["cp", "ulysses"])
def test_split_attention_equals_single_process_varlen(tmp_path, world, worker):
    mp.spawn(worker, args=(world, _port(), LENGTHS, str(tmp_path)), nprocs=world, join=True)
    out, gq, gk, gv, real = _single(LENGTHS, world)
    where = {int(t): i for i, t in enumerate(real)}
    held = []
    for r in range(world):
        got = torch.load(tmp_path / f"{r}.pt", weights_only=False)
        held += got["idx"].tolist()
        for j, t in enumerate(got["idx"].tolist()):
            if t in where:
                i = where[t]
                for mine, ref in ((got["out"], out), (got["gq"], gq), (got["gk"], gk), (got["gv"], gv)):
                    assert (mine[j] - ref[i]).abs().max() < 1e-10
            else:  # padding: inert, no gradient reaches it
                assert got["gq"][j].abs().max() == 0 and got["gk"][j].abs().max() == 0
    assert sorted(held) == list(range(int(padded_lengths(np.array(LENGTHS), world).sum()))), "every token on one rank"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=12), st.sampled_from([1, 2, 3, 4, 8]))
def test_load_balanced_split_is_whole_and_balanced(lengths, n):
    cu = np.concatenate([[0], np.cumsum(padded_lengths(np.array(lengths), n))])
    parts = [cp_indices(cu, r, n) for r in range(n)]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(cu[-1])), "every token on exactly one rank"
    assert len({len(p) for p in parts}) == 1
    work = causal_work(cu, n)
    assert work.max() == work.min(), "causal attention work is equal on every rank"


def test_bad_cp_sizes_say_what_to_pass():
    with pytest.raises(ConfigError, match=r"not divisible by 2 x cp_size = 8; pass a pack length that is \(e.g. --pack-len 1008\)"):
        check_cp_size(1001, 4)
    with pytest.raises(ConfigError, match="--pack-len 1002"):
        ulysses_slice(1001, 0, 3)
    with pytest.raises(ConfigError, match="padded to multiples"):
        cp_indices(np.array([0, 5]), 0, 2)


def _tables(vocab):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(vocab, h, D, generator=g, dtype=torch.float64) for h in (HQ, HKV, HKV)]


def _loader_worker(rank, world, port, run, out_dir):
    """A CP rank fed by PackedLoader(cp_rank, cp_size): q, k, v from fixed per-token tables, then the same
    reference CP attention as above, over the loader's own split batch."""
    from packer.train.loader import PackedLoader

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    b = next(iter(PackedLoader(run, 2, flatten=True, cp_rank=rank, cp_size=world)))
    Eq, Ek, Ev = _tables(600)
    ids = b["input_ids"][0]
    ql, kl, vl = (E[ids].clone().requires_grad_() for E in (Eq, Ek, Ev))
    cu_pad = b["cu_seqlens_padded"].numpy()
    idx = cp_indices(cu_pad, rank, world)
    all_idx = torch.from_numpy(np.concatenate([cp_indices(cu_pad, r, world) for r in range(world)]))
    order = torch.argsort(all_idx)
    K, V = _gather(kl)[order], _gather(vl)[order]
    seg = torch.from_numpy(np.repeat(np.arange(len(cu_pad) - 1), np.diff(cu_pad)))
    qi = torch.from_numpy(idx)
    allowed = (seg[qi][:, None] == seg[None, :]) & (torch.arange(len(seg))[None, :] <= qi[:, None])
    scores = torch.einsum("qhd,khd->hqk", ql, K.repeat_interleave(HQ // HKV, 1)) / D ** 0.5
    out = torch.einsum("hqk,khd->qhd", torch.softmax(scores.masked_fill(~allowed[None], float("-inf")), -1),
                       V.repeat_interleave(HQ // HKV, 1))
    w = torch.randn(int(cu_pad[-1]), HQ, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    trained = (b["labels"][0] != -100).to(torch.float64)
    (out * w[qi] * trained[:, None, None]).sum().backward()
    torch.save({"idx": idx, "out": out.detach(), "gq": ql.grad, "gk": kl.grad, "gv": vl.grad,
                "cu_pad": cu_pad, "cu": b["cu_seqlens"].numpy()}, f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_loader_cp_batches_give_single_process_attention(tmp_path, world):
    from conftest import sft_records, write_jsonl
    from packer.core import config as C
    from packer.train.loader import PackedLoader
    from packer.pipeline import pack

    data = write_jsonl(tmp_path / "d.jsonl", sft_records(60, seed=2))
    run = tmp_path / "run"
    pack([str(data)], run, plan_config=C.PlanConfig(pack_len=512, cp_size=4))
    mp.spawn(_loader_worker, args=(world, _port(), str(run), str(tmp_path)), nprocs=world, join=True)
    b = next(iter(PackedLoader(run, 2, flatten=True)))
    ids = b["input_ids"][0]
    Eq, Ek, Ev = _tables(600)
    q, k, v = (E[ids].clone().requires_grad_() for E in (Eq, Ek, Ev))
    out = varlen_attention(q, k, v, b["cu_seqlens"], int(b["max_seqlen"]), backend="sdpa")
    got0 = torch.load(tmp_path / "0.pt", weights_only=False)
    cu, cu_pad = got0["cu"], got0["cu_pad"]
    slot = np.repeat(cu_pad[:-1] - cu[:-1], np.diff(cu)) + np.arange(int(cu[-1]))  # real token -> padded slot
    w = torch.randn(int(cu_pad[-1]), HQ, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    trained = (b["labels"][0] != -100).to(torch.float64)
    (out * w[torch.from_numpy(slot)] * trained[:, None, None]).sum().backward()
    real_of = {int(s): i for i, s in enumerate(slot)}
    for r in range(world):
        got = torch.load(tmp_path / f"{r}.pt", weights_only=False)
        for j, s in enumerate(got["idx"].tolist()):
            if s in real_of:
                i = real_of[s]
                for mine, ref in ((got["out"], out.detach()), (got["gq"], q.grad), (got["gk"], k.grad), (got["gv"], v.grad)):
                    assert (mine[j] - ref[i]).abs().max() < 1e-10


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=50), st.integers(1, 16))
def test_padded_lengths_are_the_smallest_multiple_that_holds_each_length(lengths, cp_size):
    """Each length is padded to the smallest multiple of 2 x cp_size that holds it, so a length that is
    already a multiple gets no padding at all (cp_size 1: no padding)."""
    got = padded_lengths(np.asarray(lengths), cp_size)
    m = 1 if cp_size == 1 else 2 * cp_size
    for length, padded in zip(lengths, got.tolist()):
        assert padded % m == 0 and length <= padded < length + m
