"""Memorisation: generated samples that are near-copies of real training images.

Each generated sample is compared with its nearest real training image. A distance alone has no scale, so it
is divided by that real image's distance to its own nearest *other* real image: a ratio below 1 means the
sample sits closer to a training image than any other training image does, the signature of a copy
(the "authenticity" test of Alaa et al., ICML 2022, and the copy-detection ratio of Meehan et al., AISTATS
2020, in one simple form). Samples with ``ratio < threshold`` are suspects, listed nearest first.

Example::

    >>> real = torch.randn(100, 4); fake = torch.cat([real[:3] + 1e-4, torch.randn(50, 4)])
    >>> [s["fake_index"] for s in memorisation(real, fake)["suspects"]][:3]  # doctest: +SKIP
    [0, 1, 2]
"""

from __future__ import annotations

from typing import Any

import torch

from synthkit.metrics.neighbours import (
    DEFAULT_CHUNK,
    check_features,
    nearest_neighbours,
    neighbour_distances,
)

MEMORISATION = "memorisation"
DEFAULT_THRESHOLD = 0.25


def memorisation_from_neighbours(
    fake_nn_distance: torch.Tensor,
    fake_nn_index: torch.Tensor,
    real_nn1: torch.Tensor,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    top: int = 16,
) -> dict[str, Any]:
    """Memorisation summary from precomputed neighbours (the audit gets them from its PRDC pass).

    Args:
        fake_nn_distance: per generated sample, the distance to its nearest real image.
        fake_nn_index: the index of that real image.
        real_nn1: per real image, the distance to its nearest other real image.
        threshold: a sample with ``distance / real_nn1[nearest] < threshold`` is a suspect.
        top: how many of the nearest pairs to list (suspects or not), nearest first.

    Returns:
        ``suspect_count``, ``suspect_fraction``, ``threshold``, ``min_ratio``, ``median_ratio``,
        ``nearest_pairs`` (the ``top`` lowest-ratio pairs as dicts with ``fake_index``, ``real_index``,
        ``distance``, ``ratio``, ``suspect``) and ``suspects`` (the suspects among them).
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    yardstick = real_nn1[fake_nn_index].to(fake_nn_distance.dtype)
    # A real image with an exact duplicate in the real set has yardstick 0: any copy of it has ratio 0.
    ratio = torch.where(
        yardstick > 0,
        fake_nn_distance / yardstick.clamp_min(torch.finfo(yardstick.dtype).tiny),
        torch.where(fake_nn_distance > 0, torch.inf, 0.0).to(fake_nn_distance.dtype),
    )
    suspect = ratio < threshold
    order = torch.argsort(ratio, stable=True)[:top]
    pairs = [
        {
            "fake_index": int(i),
            "real_index": int(fake_nn_index[i]),
            "distance": float(fake_nn_distance[i]),
            "ratio": float(ratio[i]),
            "suspect": bool(suspect[i]),
        }
        for i in order
    ]
    return {
        "suspect_count": int(suspect.sum()),
        "suspect_fraction": suspect.double().mean().item(),
        "threshold": threshold,
        "min_ratio": float(ratio.min()),
        "median_ratio": float(ratio.median()),
        "nearest_pairs": pairs,
        "suspects": [p for p in pairs if p["suspect"]],
    }


@torch.no_grad()
def memorisation(
    real_features: torch.Tensor,
    fake_features: torch.Tensor,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    top: int = 16,
    chunk_size: int = DEFAULT_CHUNK,
) -> dict[str, Any]:
    """Memorisation of ``fake_features`` (generated) against ``real_features`` (the training set).

    See :func:`memorisation_from_neighbours` for the result; this computes the neighbours in chunks.
    """
    check_features(real_features, "real_features")
    check_features(fake_features, "fake_features")
    if real_features.shape[0] < 2:
        raise ValueError("memorisation needs at least two real points")
    dist, idx = nearest_neighbours(fake_features, real_features, chunk_size)
    real_nn1 = neighbour_distances(real_features, 1, chunk_size)[:, 0]
    return memorisation_from_neighbours(dist, idx, real_nn1, threshold=threshold, top=top)
