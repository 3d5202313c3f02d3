"""Image helpers several stages share: float tensors to uint8 arrays, and sample grids.

A grid has one row per condition (or any other row label); the export's ``preview.png``, ``shards inspect
--grid``, the audit report and the trackers' sample grids are all drawn here, deterministically, with PIL.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """N x C x H x W floats in [0, 1] -> N x H x W x C uint8 (rounded, clamped), on the CPU."""
    return (
        (x.detach().clamp(0, 1) * 255.0)
        .round()
        .to(torch.uint8)
        .permute(0, 2, 3, 1)
        .contiguous()
        .cpu()
        .numpy()
    )


def common_shape(images: list[np.ndarray]) -> list[np.ndarray]:
    """Bring mixed sizes and modes to one H x W x C: the most common size, RGB if any is RGB."""
    sizes = Counter(im.shape[:2] for im in images)
    h, w = sizes.most_common(1)[0][0]
    channels = max(im.shape[2] for im in images)
    out = []
    for im in images:
        if im.shape[:2] != (h, w):
            pil = Image.fromarray(im[:, :, 0] if im.shape[2] == 1 else im)
            im = np.asarray(pil.resize((w, h), Image.BILINEAR)).reshape(h, w, -1)
        if im.shape[2] != channels:
            im = np.repeat(im, channels, axis=2)
        out.append(im)
    return out


def condition_grid(
    images: np.ndarray, conditions: np.ndarray, per_row: int = 10, scale: int = 2
) -> Image.Image:
    """A grid of uint8 N x H x W x C ``images``: one row per distinct value of ``conditions`` (sorted), up to
    ``per_row`` samples each, upscaled ``scale`` x (nearest)."""
    conds = sorted(set(conditions.tolist()))
    h, w, c = images.shape[1:]
    grid = np.full(((h + 2) * len(conds), (w + 2) * per_row, c), 255, dtype=np.uint8)
    for r, cond in enumerate(conds):
        for j, i in enumerate(np.flatnonzero(conditions == cond)[:per_row]):
            grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, j * (w + 2) + 1 : j * (w + 2) + 1 + w] = images[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def rows_grid(rows: list[list[np.ndarray]], scale: int = 3) -> Image.Image:
    """One grid row per list of images (converted to one size and channel count by ``common_shape``)."""
    flat = common_shape([im for row in rows for im in row])
    row_of = np.array([r for r, row in enumerate(rows) for _ in row])
    per_row = max(len(row) for row in rows)
    return condition_grid(np.stack(flat), row_of, per_row=per_row, scale=scale)
