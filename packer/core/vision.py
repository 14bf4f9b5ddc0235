"""Vision-language examples: their multi-axis rotary positions (mRoPE), per example and for packed rows, and
what turns stored pixels into a model's pixel values (ImageMeta).

Qwen2-VL, Qwen2.5-VL and Qwen3-VL rotate each token by three positions (temporal, height, width). Text
tokens have the same position on all three rows and count up by one; an image's placeholder tokens (one
per merged patch: prod(grid_thw) / merge^2 of them, in row-major order over the merged grid) sit at the
position p where the image starts plus (t, row, col), and the text after it continues from p + max(t, rows,
cols). That is what the models' own get_rope_index computes for one example (tests hold this module to it);
for a packed row it must be computed per example and concatenated: computed over the whole row, an
example's positions would continue from the one before it.

A packed row's position ids are [4, T]: the text row (0..n-1 restarting in every example, from which the
attention's example boundaries are taken) and the three mRoPE rows, the shape transformers' Qwen-VL models
read packed rows in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageMeta:
    """What turns an image's stored uint8 pixels into the model's pixel_values (from its processor; kept in
    the manifests): packer.build.images makes it, packer.train.vision uses it."""

    patch_size: int
    temporal_patch_size: int
    merge_size: int
    rescale_factor: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    do_rescale: bool = True
    do_normalize: bool = True
    mrope: bool = True
    """The model rotates by multi-axis positions (Qwen-VL): batches carry [4, rows, L] position ids."""
    extra_tokens: int = 0
    """Placeholders per image beyond prod(grid) / merge_size^2 (LLaVA: its additional tokens, less the CLS
    token the default feature strategy drops)."""
    layout: str = "patches"
    """pixel_values as the model takes them: 'patches' (Qwen-VL: rows of flattened patches) or 'images'
    (LLaVA: [n, 3, H, W])."""


class PlaceholderError(ValueError):
    """Image placeholder tokens that do not match the images (count, size, or two images touching)."""


def image_runs(ids: np.ndarray, image_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of image placeholder tokens in `ids`."""
    flag = np.concatenate([[0], (np.asarray(ids) == image_token_id).astype(np.int8), [0]])
    d = np.diff(flag)
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def placeholders(grids: np.ndarray, merge: int, extra: int = 0) -> np.ndarray:
    """int64 [I]: placeholder tokens of each image: prod(grid_thw) / merge^2 (+ extra, LLaVA's)."""
    g = np.asarray(grids, np.int64).reshape(-1, 3)
    return g.prod(axis=1) // (merge * merge) + extra


def check_runs(ids: np.ndarray, cu_seqlens: np.ndarray, image_token_id: int, counts: np.ndarray) -> None:
    """The placeholder runs of a row (segments cu_seqlens) are the images' in order, one run of counts[k]
    tokens per image, none crossing a segment boundary; else PlaceholderError."""
    starts, ends = image_runs(ids, image_token_id)
    counts = np.asarray(counts, np.int64)
    if len(starts) != len(counts):
        raise PlaceholderError(f"{len(starts)} runs of image placeholders for {len(counts)} images (adjacent images' "
                               "placeholders merge into one run: the chat template must write something between them)")
    bad = np.flatnonzero(ends - starts != counts)
    if bad.size:
        k = int(bad[0])
        raise PlaceholderError(f"image {k} has {int(ends[k] - starts[k])} placeholders, not {int(counts[k])} (two "
                               "images' placeholders touching also count as one run)")
    cu = np.asarray(cu_seqlens, np.int64)
    if len(starts) and ((np.searchsorted(cu, starts, "right") != np.searchsorted(cu, ends - 1, "right")).any()):
        raise PlaceholderError("an image's placeholders are split between two examples")


def mrope_positions(ids: np.ndarray, image_token_id: int, grids: np.ndarray, merge: int) -> np.ndarray:
    """int64 [3, n]: the mRoPE positions of one example whose images have `grids` ([I, 3] t, h, w in
    patches, in the order their placeholders appear). Raises PlaceholderError when the placeholder runs
    do not match the images one for one."""
    ids = np.asarray(ids)
    n = len(ids)
    g = np.asarray(grids, np.int64).reshape(-1, 3)
    starts, ends = image_runs(ids, image_token_id)
    if len(starts) != len(g):
        raise PlaceholderError(f"{len(starts)} runs of image placeholders for {len(g)} images")
    pos = np.empty((3, n), np.int64)
    cur, done = 0, 0
    for (s, e), (t, h, w) in zip(zip(starts.tolist(), ends.tolist()), g.tolist()):
        if t != 1:
            raise PlaceholderError(f"an image grid with t={t} (a video): images only")
        lh, lw = h // merge, w // merge
        if h % merge or w % merge or e - s != lh * lw:
            raise PlaceholderError(f"an image of grid {[t, h, w]} has {e - s} placeholders, not {lh * lw}"
                                   f" (prod(grid) / {merge}^2; two images' placeholders touching also count as one run)")
        pos[:, done:s] = cur + np.arange(s - done)
        cur += s - done
        pos[0, s:e] = cur
        pos[1, s:e] = cur + np.repeat(np.arange(lh), lw)
        pos[2, s:e] = cur + np.tile(np.arange(lw), lh)
        cur += max(1, lh, lw)
        done = e
    pos[:, done:] = cur + np.arange(n - done)
    return pos


def packed_positions(ids: np.ndarray, cu_seqlens: np.ndarray, image_token_id: int, grids: np.ndarray,
                     merge: int) -> np.ndarray:
    """int64 [4, T] for a packed row: the text row restarting in every segment of cu_seqlens, then each
    segment's own mRoPE positions. `grids` holds the row's images in placeholder order; each segment takes
    the images whose placeholder runs it holds (an image split between segments is refused)."""
    ids = np.asarray(ids)
    cu = np.asarray(cu_seqlens, np.int64)
    g = np.asarray(grids, np.int64).reshape(-1, 3)
    starts, ends = image_runs(ids, image_token_id)
    seg_of_start = np.searchsorted(cu, starts, side="right") - 1
    seg_of_end = np.searchsorted(cu, ends - 1, side="right") - 1
    if (seg_of_start != seg_of_end).any():
        raise PlaceholderError("an image's placeholders are split between two examples")
    if len(starts) != len(g):
        raise PlaceholderError(f"{len(starts)} runs of image placeholders in the row for {len(g)} images")
    per_seg = np.bincount(seg_of_start, minlength=len(cu) - 1) if len(starts) else np.zeros(len(cu) - 1, np.int64)
    first = np.concatenate([[0], np.cumsum(per_seg)])
    out = np.empty((4, int(cu[-1])), np.int64)
    for k in range(len(cu) - 1):
        a, b = int(cu[k]), int(cu[k + 1])
        out[0, a:b] = np.arange(b - a)
        out[1:, a:b] = mrope_positions(ids[a:b], image_token_id, g[first[k]:first[k + 1]], merge)
    return out


__all__ = ["ImageMeta", "PlaceholderError", "check_runs", "image_runs", "mrope_positions", "packed_positions", "placeholders"]
