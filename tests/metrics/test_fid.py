"""FID and KID: parity with a reference written here, self-distance, batch-size independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from synthkit.metrics.fid import fid, frechet_distance, kid


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix) + shift


def reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """Heusel et al.'s formula with scipy's sqrtm, as in the original TTUR code."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def reference_kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al., 2018), equal set sizes."""
    d, m = a.shape[1], a.shape[0]
    kxx, kyy, kxy = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2 * kxy.sum() / m**2)


def test_fid_matches_the_scipy_reference() -> None:
    real, fake = _features(400, 12, 0), _features(300, 12, 1, shift=0.3)
    assert fid(real, fake) == pytest.approx(reference_fid(real.numpy(), fake.numpy()), rel=1e-6)


def test_frechet_distance_pure_function_matches_the_reference() -> None:
    a, b = _features(200, 8, 2).numpy(), _features(250, 8, 3, shift=1.0).numpy()
    got = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert got == pytest.approx(reference_fid(a, b), rel=1e-8)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift() -> None:
    x = _features(500, 16, 4)
    assert abs(fid(x, x)) < 1e-6
    assert fid(x, x + 0.5) == pytest.approx(16 * 0.25, rel=1e-6)  # a mean shift adds ||delta||^2 exactly


def test_fid_does_not_depend_on_the_chunk_size() -> None:
    real, fake = _features(301, 10, 5), _features(257, 10, 6, shift=0.2)
    values = [fid(real, fake, chunk_size=c) for c in (1, 7, 64, 10_000)]
    assert max(values) - min(values) < 1e-9 * max(1.0, abs(values[0]))


def test_kid_matches_the_reference_with_one_subset_of_everything() -> None:
    real, fake = _features(120, 6, 7), _features(120, 6, 8, shift=0.4)
    mean, std = kid(real, fake, subsets=1, subset_size=120)
    assert mean == pytest.approx(reference_kid(real.numpy(), fake.numpy()), rel=1e-9)
    assert std == 0.0


def test_kid_is_seeded_and_does_not_depend_on_the_chunk_size() -> None:
    real, fake = _features(300, 6, 9), _features(250, 6, 10, shift=0.4)
    a = kid(real, fake, subsets=20, subset_size=100, seed=3, chunk_size=17)
    b = kid(real, fake, subsets=20, subset_size=100, seed=3, chunk_size=1000)
    assert a == pytest.approx(b, rel=1e-12)
    assert a[0] > 0.01  # a shifted set is measurably different ...
    same = kid(real, real, subsets=20, subset_size=100, seed=3)
    assert abs(same[0]) < a[0] / 5  # ... and a set against itself is not


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="dimension"):
        fid(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="non-finite"):
        fid(torch.full((10, 3), float("nan")), torch.randn(10, 3))


def test_fid_and_kid_equal_torchmetrics_on_the_same_features() -> None:
    """The streamed moments and the in-house KID give torchmetrics' values (same subsets drawn)."""
    import warnings

    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 8

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    real, fake = _features(230, 8, 11), _features(190, 8, 12, shift=0.3)
    ref_fid = FrechetInceptionDistance(feature=Identity())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref_kid = KernelInceptionDistance(feature=Identity(), subsets=7, subset_size=50)
    for metric in (ref_fid, ref_kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    assert fid(real, fake) == pytest.approx(float(ref_fid.compute()), rel=1e-9)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        mean, std = ref_kid.compute()
    ours = kid(real, fake, subsets=7, subset_size=50, seed=4)
    assert ours == pytest.approx((float(mean), float(std)), rel=1e-9)


def test_streamed_moments_equal_the_whole_set() -> None:
    from synthkit.metrics.fid import FeatureMoments, fid_from_moments

    real, fake = _features(333, 9, 13), _features(201, 9, 14, shift=0.1)
    moments = []
    for x, step in ((real, 50), (fake, 1)):
        m = FeatureMoments(9)
        for i in range(0, x.shape[0], step):
            m.update(x[i : i + step].float())
        moments.append(m)
    assert moments[0].n == 333
    assert fid_from_moments(*moments) == pytest.approx(fid(real.float(), fake.float()), rel=1e-6)
