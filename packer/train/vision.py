"""What a vision-language model takes for the images of a packed batch, from the pixels Packer stores.

Packer keeps each image as the uint8 pixels its processor resized it to ([3, H, W], packer.build.images);
`pixel_values` turns them into the model's input exactly as the processor does after resizing (rescale by
rescale_factor in float64 then float32, normalize per channel in float32, then cut into patches of
patch_size, merge_size x merge_size blocks in row-major order, each patch repeated temporal_patch_size
times): rows [sum over images of h * w, 3 * temporal_patch_size * patch_size^2], float32.

`packed_inputs` gives a packed row's vision inputs: pixel_values and image_grid_thw of its images in
placeholder order, and the [4, T] position ids (the text row restarting per example, then each example's
own mRoPE positions: packer.core.vision), which is how transformers' Qwen-VL models read packed rows.
"""

from __future__ import annotations

import numpy as np
import torch

from packer.core.vision import ImageMeta, PlaceholderError, packed_positions, placeholders


def pixel_values(pixels: list[np.ndarray], meta: ImageMeta) -> np.ndarray:
    """float32 [sum h*w, 3 * T * P * P] of the images' uint8 [3, H, W] pixels (see the module docstring)."""
    P, M, T = meta.patch_size, meta.merge_size, meta.temporal_patch_size
    mean = np.asarray(meta.image_mean, np.float32)[:, None, None]
    std = np.asarray(meta.image_std, np.float32)[:, None, None]
    out = []
    for px in pixels:
        c, H, W = px.shape
        x = (px.astype(np.float64) * meta.rescale_factor).astype(np.float32) if meta.do_rescale else px.astype(np.float32)
        if meta.do_normalize:
            x = (x - mean) / std
        if meta.layout == "images":  # LLaVA: the normalized images themselves, [n, 3, H, W]
            out.append(x[None])
            continue
        gh, gw = H // P, W // P
        x = x.reshape(c, gh // M, M, P, gw // M, M, P).transpose(1, 4, 2, 5, 0, 3, 6)
        x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], T, P, P))
        out.append(x.reshape(gh * gw, c * T * P * P))
    if meta.layout == "images":
        if len({o.shape for o in out}) > 1:
            raise ValueError("images of different sizes cannot be one [n, 3, H, W] batch")
        return np.concatenate(out) if out else np.zeros((0, 3, P, P), np.float32)
    return np.concatenate(out) if out else np.zeros((0, 3 * T * P * P), np.float32)


def packed_inputs(input_ids: torch.Tensor, cu_seqlens: torch.Tensor, pixels: list[np.ndarray],
                  grids: np.ndarray, meta: ImageMeta, image_token_id: int) -> dict[str, torch.Tensor]:
    """A packed row's vision inputs (input_ids of any shape, rows concatenated; cu_seqlens its examples'
    boundaries; the row's images in placeholder order): pixel_values, and for mRoPE models (Qwen-VL)
    image_grid_thw and position_ids [4, T] (the caller shapes them to its rows). Raises PlaceholderError when
    the placeholders do not match the images (per run and example for Qwen-VL; in total for LLaVA, whose
    features fill them in order)."""
    ids = input_ids.reshape(-1).cpu().numpy()
    grid = np.asarray(grids, np.int64).reshape(-1, 3)
    out = {"pixel_values": torch.from_numpy(pixel_values(pixels, meta))}
    if meta.mrope:
        pos = packed_positions(ids, cu_seqlens.cpu().numpy(), image_token_id, grid, meta.merge_size)
        out.update(image_grid_thw=torch.from_numpy(grid), position_ids=torch.from_numpy(pos))
    elif int((ids == image_token_id).sum()) != int(placeholders(grid, meta.merge_size, meta.extra_tokens).sum()):
        raise PlaceholderError(f"{int((ids == image_token_id).sum())} placeholders for {len(grid)} images")
    return out


__all__ = ["packed_inputs", "pixel_values"]
