"""Broken images: constant, saturated or non-finite samples, the failure modes of a collapsing generator.

- constant: every pixel of every channel has the same value (a blank image);
- saturated: at least ``saturated_fraction`` of the values sit at the ends of the range (0 or 1 for float
  images in [0, 1], 0 or 255 for uint8) but the image is not constant. The default of 0.99 leaves real
  Fashion-MNIST alone (its mostly black background still has a non-extreme object);
- non_finite: a NaN or infinite value (float images only; a decoded PNG is always finite).

An image counts once in ``broken``, by the first reason that applies in the order non_finite, constant,
saturated.

Example::

    >>> x = torch.rand(4, 1, 8, 8); x[1] = 0.0
    >>> broken_images(x)["constant"]
    1
"""

from __future__ import annotations

from typing import Any

import torch

BROKEN = "broken"
REASONS = ("non_finite", "constant", "saturated")


def broken_masks(images: torch.Tensor, *, saturated_fraction: float = 0.99) -> dict[str, torch.Tensor]:
    """Per-image boolean masks, one per reason in :data:`REASONS` (exclusive, in that order)."""
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"images must be N x ... with N >= 1, got shape {tuple(images.shape)}")
    if not 0 < saturated_fraction <= 1:
        raise ValueError(f"saturated_fraction must be in (0, 1], got {saturated_fraction}")
    flat = images.reshape(images.shape[0], -1)
    if flat.dtype == torch.uint8:
        lo, hi = 0, 255
        non_finite = torch.zeros(flat.shape[0], dtype=torch.bool)
    else:
        lo, hi = 0.0, 1.0
        non_finite = ~torch.isfinite(flat).all(dim=1)
    finite = torch.nan_to_num(flat.double(), nan=0.0, posinf=0.0, neginf=0.0)
    constant = (finite.amax(dim=1) == finite.amin(dim=1)) & ~non_finite
    extreme = ((flat <= lo) | (flat >= hi)).double().mean(dim=1) >= saturated_fraction
    saturated = extreme & ~constant & ~non_finite
    return {"non_finite": non_finite, "constant": constant, "saturated": saturated}


def broken_images(
    images: torch.Tensor, *, saturated_fraction: float = 0.99, chunk_size: int = 8192
) -> dict[str, Any]:
    """Counts of broken images per reason, the total, its fraction, and the indices of the broken ones."""
    masks: dict[str, list[torch.Tensor]] = {r: [] for r in REASONS}
    for i in range(0, images.shape[0], chunk_size):
        for reason, mask in broken_masks(
            images[i : i + chunk_size], saturated_fraction=saturated_fraction
        ).items():
            masks[reason].append(mask)
    full = {r: torch.cat(m) for r, m in masks.items()}
    any_broken = full["non_finite"] | full["constant"] | full["saturated"]
    return {
        **{r: int(full[r].sum()) for r in REASONS},
        "broken": int(any_broken.sum()),
        "fraction": any_broken.double().mean().item(),
        "indices": {r: torch.nonzero(full[r]).flatten().tolist() for r in REASONS},
        "saturated_fraction": saturated_fraction,
    }
