"""Frechet Inception Distance and Kernel Inception Distance in any feature space.

FID: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
NeurIPS 2017. KID: Binkowski et al., "Demystifying MMD GANs", ICLR 2018 (unbiased MMD^2, cubic polynomial
kernel ``(x.y / d + 1)^3``, averaged over random subsets).

FID is exact and linear in the number of points: :class:`FeatureMoments` keeps running float64 sums
(``n``, ``D`` and ``D x D``) that a streamed audit updates batch by batch on its device, so 1M x 1M costs
two ``D x D`` matrices, never the features twice. KID draws its subsets exactly as torchmetrics'
``KernelInceptionDistance`` does (per subset a ``randperm`` of the real then of the fake points, from the
global RNG, forked and seeded here), but indexes the features where they are instead of first copying
every feature to float64 on the CPU (torchmetrics keeps them all), so its memory is one subset.
``tests/metrics/test_fid.py`` checks both against references. Scores are only comparable within one
feature extractor: the audit records which one beside each score.
"""

from __future__ import annotations

import numpy as np
import torch

from synthkit.determinism import seeded
from synthkit.metrics.neighbours import check_features

FID, KID_MEAN, KID_STD = "fid", "kid_mean", "kid_std"
DEFAULT_CHUNK = 4096


class FeatureMoments:
    """Running float64 sums of features (count, sum, sum of outer products) on the features' device.

    ``mean_cov()`` gives the mean and the unbiased covariance ``(S - n mu mu^T) / (n - 1)``, the estimate
    torchmetrics' FID uses, from ``n + D + D^2`` numbers whatever ``n`` is.
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.n = 0
        self.total = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.total.shape[0]:
            raise ValueError(f"expected N x {self.total.shape[0]} features, got {tuple(features.shape)}")
        x = features.to(device=self.total.device, dtype=torch.float64)
        self.n += x.shape[0]
        self.total += x.sum(dim=0)
        self.outer += x.T @ x

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError("FID needs at least two real and two fake points")
        mu = self.total / self.n
        cov = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu.cpu().numpy(), cov.cpu().numpy()


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


def fid_from_moments(real: FeatureMoments, fake: FeatureMoments) -> float:
    """FID between two streamed feature sets."""
    mu1, s1 = real.mean_cov()
    mu2, s2 = fake.mean_cov()
    return frechet_distance(mu1, s1, mu2, s2)


@torch.no_grad()
def fid(real_features: torch.Tensor, fake_features: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> float:
    """FID between two feature sets, their moments accumulated ``chunk_size`` rows at a time."""
    _check_pair(real_features, fake_features)
    if min(real_features.shape[0], fake_features.shape[0]) < 2:
        raise ValueError("FID needs at least two real and two fake points")
    moments = []
    for features in (real_features, fake_features):
        m = FeatureMoments(features.shape[1], features.device)
        for i in range(0, features.shape[0], chunk_size):
            m.update(features[i : i + chunk_size])
        moments.append(m)
    return fid_from_moments(*moments)


def _poly_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 of two equal-size sets with the kernel ``(a.b / d + 1)^3`` (Binkowski et al.)."""
    m, gamma = x.shape[0], 1.0 / x.shape[1]
    k_xx = (x @ x.T * gamma + 1.0) ** 3
    k_yy = (y @ y.T * gamma + 1.0) ** 3
    k_xy = (x @ y.T * gamma + 1.0) ** 3
    off = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return off - 2 * k_xy.sum() / m**2


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

    The subsets are drawn as torchmetrics draws them, from the global torch RNG, forked and seeded here: the
    same features and seed give torchmetrics' value, and the caller's RNG state is untouched. Each subset is
    indexed on the features' device and only it is converted to float64.
    """
    _check_pair(real_features, fake_features)
    size = min(subset_size, real_features.shape[0], fake_features.shape[0])
    if size < 2:
        raise ValueError("KID needs at least two real and two fake points")
    del chunk_size  # kept for callers: only the subsets are ever in float64
    n_real, n_fake = real_features.shape[0], fake_features.shape[0]
    scores = []
    with seeded(seed):
        for _ in range(subsets):  # torchmetrics' order of draws, so the values are the same as its
            real_idx = torch.randperm(n_real)[:size].to(real_features.device)
            fake_idx = torch.randperm(n_fake)[:size].to(fake_features.device)
            x = real_features[real_idx].double()
            y = fake_features[fake_idx].double().to(x.device)
            scores.append(_poly_mmd(x, y).cpu())
    values = torch.stack(scores)
    return float(values.mean()), float(values.std(unbiased=False))
