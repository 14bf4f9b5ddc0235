"""Context parallelism: how a pack is laid out so each of cp_size ranks holds a whole, balanced share.

Every segment is padded to a multiple of 2N tokens (N = cp_size; padding is inert: no loss, positions
continuing the segment's) and cut into 2N equal chunks; rank r holds chunks r and 2N-1-r of every
segment (the load-balanced layout of TransformerEngine's THD format and Megatron's CP), so under causal
attention every rank does exactly the same work: chunk j costs c * (j * c) + c * (c + 1) / 2 score
entries, and j + (2N-1-j) is the same for every rank.

    segment of 8 tokens (padded), N = 2, chunks of 2:   a a | b b | c c | d d
    rank 0 holds chunks 0 and 3: a a d d     rank 1 holds chunks 1 and 2: b b c c

Ulysses-style sequence parallelism instead needs only the pack length divisible by the SP size: rank r
holds the r-th contiguous slice and heads are exchanged all-to-all.

Pure numpy: the planner, the shard writer and the loader build on these functions.
"""

from __future__ import annotations

import numpy as np

from packer.core.errors import ConfigError


def check_cp_size(pack_len: int, cp_size: int) -> None:
    """A pack length every CP rank can split: divisible by 2 x cp_size. cp_size 1 (no context parallelism)
    takes any pack length."""
    if not isinstance(cp_size, int) or isinstance(cp_size, bool) or cp_size < 1:
        raise ConfigError(f"cp_size must be a whole number >= 1; got {cp_size!r}")
    if cp_size > 1 and pack_len % (2 * cp_size):
        up = -(-pack_len // (2 * cp_size)) * 2 * cp_size
        raise ConfigError(f"pack length {pack_len} is not divisible by 2 x cp_size = {2 * cp_size}; pass a pack length "
                          f"that is (e.g. --pack-len {up}) or another --cp-size")


def padded_lengths(lengths: np.ndarray, cp_size: int) -> np.ndarray:
    """Each length rounded up to a multiple of 2 x cp_size (what a segment occupies in a CP pack); cp_size 1
    (no context parallelism) leaves the lengths as they are."""
    if cp_size == 1:
        return np.asarray(lengths, np.int64)
    m = 2 * cp_size
    return -(-np.asarray(lengths, np.int64) // m) * m


def cp_indices(cu_seqlens_padded: np.ndarray, cp_rank: int, cp_size: int) -> np.ndarray:
    """int64 positions (into the padded pack) that rank cp_rank holds, in its local order: for every
    segment, chunk cp_rank then chunk 2N-1-cp_rank. Local cu_seqlens are cu_seqlens_padded // cp_size."""
    if not 0 <= cp_rank < cp_size:
        raise ConfigError(f"cp_rank {cp_rank} is not in 0..{cp_size - 1}")
    cu = np.asarray(cu_seqlens_padded, np.int64)
    if cp_size == 1:
        return np.arange(int(cu[-1]), dtype=np.int64)
    lens = np.diff(cu)
    if np.any(lens % (2 * cp_size)):
        raise ConfigError(f"segments must be padded to multiples of 2 x cp_size = {2 * cp_size} (plan with cp_size)")
    c = lens // (2 * cp_size)
    first = cu[:-1] + cp_rank * c
    second = cu[:-1] + (2 * cp_size - 1 - cp_rank) * c
    starts = np.stack([first, second], axis=1).reshape(-1)
    sizes = np.repeat(c, 2)
    return np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes) + np.arange(int(sizes.sum()))


def causal_work(cu_seqlens_padded: np.ndarray, cp_size: int) -> np.ndarray:
    """float64 [cp_size]: causal attention score entries each rank computes for its queries (all keys
    of the segment at or before each query), for the imbalance the report states."""
    cu = np.asarray(cu_seqlens_padded, np.int64)
    pos = np.arange(int(cu[-1])) - np.repeat(cu[:-1], np.diff(cu))
    return np.array([float((pos[cp_indices(cu, r, cp_size)] + 1).sum()) for r in range(cp_size)])


def ulysses_slice(pack_len: int, sp_rank: int, sp_size: int) -> slice:
    """The contiguous tokens rank sp_rank holds under Ulysses sequence parallelism."""
    if pack_len % sp_size:
        raise ConfigError(f"pack length {pack_len} is not divisible by the sequence-parallel size {sp_size}; pass "
                          f"--pack-len {-(-pack_len // sp_size) * sp_size} or another size")
    n = pack_len // sp_size
    return slice(sp_rank * n, (sp_rank + 1) * n)
