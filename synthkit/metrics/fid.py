"""Frechet Inception Distance and Kernel Inception Distance in any feature space.

FID: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
NeurIPS 2017. KID: Binkowski et al., "Demystifying MMD GANs", ICLR 2018 (unbiased MMD^2, cubic polynomial
kernel ``(x.y / d + 1)^3``, averaged over random subsets).

Both run through torchmetrics with a custom feature module. The audit extracts features once (they also
feed PRDC and memorisation), so the module handed to torchmetrics is :class:`FeatureIdentity` and the
features are fed in chunks: FID keeps only running float64 sums (``D + D x D``), never all features.
Scores are only comparable within one feature extractor: the audit records which one beside each score.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from synthkit.metrics.neighbours import check_features

FID, KID_MEAN, KID_STD = "fid", "kid_mean", "kid_std"
DEFAULT_CHUNK = 4096


class FeatureIdentity(nn.Module):
    """The torchmetrics "feature extractor" for features that are already extracted."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected N x {self.num_features} features, got {tuple(x.shape)}")
        return x


def _check_pair(real: torch.Tensor, fake: torch.Tensor) -> None:
    check_features(real, "real_features")
    check_features(fake, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]}")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two Gaussians, in float64.

    ``tr((S1 S2)^(1/2))`` is computed as the sum of square roots of the eigenvalues of the symmetric PSD
    matrix ``S1^(1/2) S2 S1^(1/2)``, which has the same spectrum and is better conditioned than ``S1 S2``.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ s2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)


@torch.no_grad()
def fid(real_features: torch.Tensor, fake_features: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> float:
    """FID between two feature sets via torchmetrics' ``FrechetInceptionDistance`` fed in chunks."""
    _check_pair(real_features, fake_features)
    if min(real_features.shape[0], fake_features.shape[0]) < 2:
        raise ValueError("FID needs at least two real and two fake points")
    metric = FrechetInceptionDistance(feature=FeatureIdentity(real_features.shape[1]))
    for features, real in ((real_features, True), (fake_features, False)):
        for i in range(0, features.shape[0], chunk_size):
            metric.update(features[i : i + chunk_size].double(), real=real)
    return float(metric.compute())


@torch.no_grad()
def kid(
    real_features: torch.Tensor,
    fake_features: torch.Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[float, float]:
    """(mean, std) of KID over ``subsets`` random subsets of ``subset_size`` (clipped to the smaller set).

    The subsets are drawn by torchmetrics from the global torch RNG; it is forked and seeded here, so the
    same features and seed give the same value and the caller's RNG state is untouched.
    """
    _check_pair(real_features, fake_features)
    size = min(subset_size, real_features.shape[0], fake_features.shape[0])
    if size < 2:
        raise ValueError("KID needs at least two real and two fake points")
    with warnings.catch_warnings():  # "will save all extracted features": intended, they are features already
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=FeatureIdentity(real_features.shape[1]), subsets=subsets, subset_size=size
        )
    for features, real in ((real_features, True), (fake_features, False)):
        for i in range(0, features.shape[0], chunk_size):
            metric.update(features[i : i + chunk_size].double(), real=real)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)
