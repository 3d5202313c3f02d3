"""Alignment and uniformity of L2-normalised features.

Wang and Isola, "Understanding Contrastive Representation Learning through Alignment and Uniformity on the
Hypersphere", ICML 2020: ``alignment = E ||f(x) - f(y)||^alpha`` over positive pairs (lower: positives map
close together) and ``uniformity = log E exp(-t ||f(x) - f(y)||^2)`` over all distinct pairs (lower: features
spread over the sphere). Uniformity is accumulated over ``chunk_size`` blocks with a running log-sum-exp,
so it needs no ``N x N`` matrix.

Example::

    >>> x = torch.randn(100, 16)
    >>> alignment(x, x)
    0.0
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from synthkit.metrics.neighbours import DEFAULT_CHUNK, check_features

ALIGNMENT, UNIFORMITY = "alignment", "uniformity"


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """Mean ``||x_i - y_i||^alpha`` over the positive pairs (rows) of normalised ``x`` and ``y``."""
    if x.shape != y.shape:
        raise ValueError(f"pair features must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    check_features(x, "x")
    x, y = F.normalize(x.double(), dim=1), F.normalize(y.double(), dim=1)
    return (x - y).norm(dim=1).pow(alpha).mean().item()


@torch.no_grad()
def uniformity(x: torch.Tensor, t: float = 2.0, chunk_size: int = DEFAULT_CHUNK) -> float:
    """``log`` of the mean of ``exp(-t ||x_i - x_j||^2)`` over all pairs ``i < j`` of normalised rows."""
    check_features(x, "x")
    n = x.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least two points")
    z = F.normalize(x.double(), dim=1)
    total = torch.tensor(-math.inf, dtype=torch.float64, device=z.device)
    for i in range(0, n, chunk_size):
        rows = z[i : i + chunk_size]
        for j in range(i, n, chunk_size):
            sq = torch.cdist(rows, z[j : j + chunk_size]).pow(2)
            if j == i:  # the diagonal block: keep the strict upper triangle only
                keep = torch.triu(torch.ones_like(sq, dtype=torch.bool), diagonal=1)
                sq = sq[keep]
            total = torch.logaddexp(total, torch.logsumexp((-t * sq).reshape(-1), dim=0))
    return (total - math.log(n * (n - 1) / 2)).item()
