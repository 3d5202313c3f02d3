"""Precision, recall, density and coverage with k-NN manifolds.

Naeem, Oh, Uh, Choi, Yoo, "Reliable Fidelity and Diversity Metrics for Generative Models", ICML 2020
(precision/recall after Kynkaanniemi et al., NeurIPS 2019). Each real point gets a ball whose radius is
the distance to its k-th nearest real neighbour (likewise for fake points, for recall):

- precision: share of fake points inside at least one real ball (fidelity);
- recall: share of real points inside at least one fake ball (diversity);
- density: mean number of real balls a fake point lies in, divided by k (fidelity, robust to outliers);
- coverage: share of real points whose ball holds at least one fake point (diversity).

Comparisons are strict (``d < radius``) as in the reference code. Everything runs on
``chunk_size x chunk_size`` distance blocks (:mod:`synthkit.metrics.neighbours`): one pass over the
fake x real blocks gives all four metrics plus each fake point's nearest real point (memorisation).

Example::

    >>> r = prdc(torch.randn(500, 8), torch.randn(500, 8), k=5)
    >>> 0.7 < r.precision <= 1 and 0.7 < r.coverage <= 1
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from synthkit.metrics.neighbours import DEFAULT_CHUNK, check_features, distance_blocks, neighbour_distances

PRECISION, RECALL, DENSITY, COVERAGE = "precision", "recall", "density", "coverage"


@dataclass(frozen=True)
class PRDCResult:
    """The four scores, and per-point by-products the audit reuses.

    ``real_covered``: per real point, whether a fake point lies in its ball (per-class coverage);
    ``fake_nn_distance`` / ``fake_nn_index``: each fake point's nearest real point;
    ``real_radii``: each real point's k-th neighbour distance; ``real_nn1``: its nearest other real point.
    The tensors are on the features' device.
    """

    precision: float
    recall: float
    density: float
    coverage: float
    k: int
    real_covered: torch.Tensor
    fake_nn_distance: torch.Tensor
    fake_nn_index: torch.Tensor
    real_radii: torch.Tensor
    real_nn1: torch.Tensor
    real_knn: torch.Tensor | None = None  # N x k: reusable by a second prdc() against the same real points

    def scores(self) -> dict[str, float]:
        return {
            PRECISION: self.precision,
            RECALL: self.recall,
            DENSITY: self.density,
            COVERAGE: self.coverage,
        }


@torch.no_grad()
def prdc(
    real_features: torch.Tensor,
    fake_features: torch.Tensor,
    k: int = 5,
    chunk_size: int = DEFAULT_CHUNK,
    real_knn: torch.Tensor | None = None,
) -> PRDCResult:
    """Precision, recall, density and coverage of ``fake_features`` against ``real_features``.

    Args:
        real_features: ``N x D`` features of real images.
        fake_features: ``M x D`` features of generated images.
        k: neighbourhood size of the manifold balls (Naeem et al. use 5).
        chunk_size: rows and columns per distance block; the result does not depend on it.
        real_knn: the real points' distances to their ``k`` nearest other real points (``N x k``, as
            :func:`~synthkit.metrics.neighbours.neighbour_distances` gives them), when already computed for
            these real features: scoring two sets against one real set then costs the N x N pass once.
    """
    check_features(real_features, "real_features")
    check_features(fake_features, "fake_features")
    n, m = real_features.shape[0], fake_features.shape[0]
    if not 1 <= k < min(n, m):
        raise ValueError(f"k must be in [1, {min(n, m) - 1}] for {n} real and {m} fake points, got {k}")
    if real_knn is None:
        real_knn = neighbour_distances(real_features, k, chunk_size)
    elif real_knn.shape != (n, k):
        raise ValueError(f"real_knn must be {n} x {k}, got {tuple(real_knn.shape)}")
    real_radii, real_nn1 = real_knn[:, k - 1], real_knn[:, 0]  # nn1: the memorisation yardstick
    fake_radii = neighbour_distances(fake_features, k, chunk_size)[:, k - 1]

    dtype, dev = real_radii.dtype, real_radii.device  # results stay on the features' device
    in_real_balls = torch.zeros(m, dtype=torch.int64, device=dev)  # per fake: how many real balls contain it
    real_in_fake_ball = torch.zeros(
        n, dtype=torch.bool, device=dev
    )  # per real: inside some fake ball (recall)
    real_min = torch.full((n,), float("inf"), dtype=dtype, device=dev)  # per real: nearest fake (coverage)
    fake_min = torch.full((m,), float("inf"), dtype=dtype, device=dev)
    fake_arg = torch.zeros(m, dtype=torch.int64, device=dev)
    for i, j, block in distance_blocks(fake_features, real_features, chunk_size):
        rows, cols = slice(i, i + block.shape[0]), slice(j, j + block.shape[1])
        in_real_balls[rows] += (block < real_radii[cols][None, :]).sum(dim=1)
        real_in_fake_ball[cols] |= (block < fake_radii[rows][:, None]).any(dim=0)
        real_min[cols] = torch.minimum(real_min[cols], block.min(dim=0).values)
        d, a = block.min(dim=1)
        better = d < fake_min[rows]
        fake_min[rows] = torch.where(better, d, fake_min[rows])
        fake_arg[rows] = torch.where(better, a + j, fake_arg[rows])
    covered = real_min < real_radii
    return PRDCResult(
        precision=(in_real_balls > 0).double().mean().item(),
        recall=real_in_fake_ball.double().mean().item(),
        density=in_real_balls.double().mean().item() / k,
        coverage=covered.double().mean().item(),
        k=k,
        real_covered=covered,
        fake_nn_distance=fake_min,
        fake_nn_index=fake_arg,
        real_radii=real_radii,
        real_nn1=real_nn1,
        real_knn=real_knn,
    )
