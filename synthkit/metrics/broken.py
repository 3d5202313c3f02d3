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


class BrokenCounter:
    """:func:`broken_images` over a stream of batches: counts per reason and the first indices of each.

    The streamed audit never holds every image, so it feeds each batch with the index of its first image;
    ``max_listed`` bounds the indices kept per reason (None keeps them all), the counts are always exact.
    """

    def __init__(self, *, saturated_fraction: float = 0.99, max_listed: int | None = None) -> None:
        self.saturated_fraction = saturated_fraction
        self.max_listed = max_listed
        self.n = 0
        self.counts = dict.fromkeys(REASONS, 0)
        self.broken = 0
        self.indices: dict[str, list[int]] = {r: [] for r in REASONS}

    def add(self, images: torch.Tensor, offset: int) -> None:
        masks = broken_masks(images, saturated_fraction=self.saturated_fraction)
        self.n += images.shape[0]
        self.broken += int((masks["non_finite"] | masks["constant"] | masks["saturated"]).sum())
        for reason, mask in masks.items():
            self.counts[reason] += int(mask.sum())
            room = None if self.max_listed is None else self.max_listed - len(self.indices[reason])
            if room is None or room > 0:
                found = (torch.nonzero(mask).flatten() + offset).tolist()
                self.indices[reason] += found if room is None else found[:room]

    def result(self) -> dict[str, Any]:
        return {
            **self.counts,
            "broken": self.broken,
            "fraction": self.broken / self.n if self.n else 0.0,
            "indices": {r: list(v) for r, v in self.indices.items()},
            "saturated_fraction": self.saturated_fraction,
        }


def broken_images(
    images: torch.Tensor, *, saturated_fraction: float = 0.99, chunk_size: int = 8192
) -> dict[str, Any]:
    """Counts of broken images per reason, the total, its fraction, and the indices of the broken ones."""
    counter = BrokenCounter(saturated_fraction=saturated_fraction)
    for i in range(0, images.shape[0], chunk_size):
        counter.add(images[i : i + chunk_size], i)
    if counter.n == 0:
        broken_masks(images, saturated_fraction=saturated_fraction)  # the same error for no images
    return counter.result()
