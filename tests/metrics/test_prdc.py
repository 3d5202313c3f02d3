"""Precision, recall, density, coverage: parity with a brute-force reference, chunk-size independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from synthkit.metrics.neighbours import nearest_neighbours, neighbour_distances
from synthkit.metrics.prdc import prdc


def reference_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Naeem et al. (2020), written out with full distance matrices as in their reference code."""
    real_radii = np.sort(cdist(real, real), axis=1)[:, k]  # column 0 is the point itself
    fake_radii = np.sort(cdist(fake, fake), axis=1)[:, k]
    d = cdist(real, fake)  # real x fake
    return {
        "precision": (d < real_radii[:, None]).any(axis=0).mean(),
        "recall": (d < fake_radii[None, :]).any(axis=1).mean(),
        "density": (1.0 / k) * (d < real_radii[:, None]).sum(axis=0).mean(),
        "coverage": (d.min(axis=1) < real_radii).mean(),
    }


@pytest.mark.parametrize("k", [1, 3, 5])
def test_prdc_matches_the_brute_force_reference(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    real = torch.randn(230, 5, generator=g, dtype=torch.float64)
    fake = 0.8 * torch.randn(170, 5, generator=g, dtype=torch.float64) + 0.3
    got = prdc(real, fake, k=k, chunk_size=64).scores()
    want = reference_prdc(real.numpy(), fake.numpy(), k)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_prdc_does_not_depend_on_the_chunk_size() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(150, 4, generator=g, dtype=torch.float64)
    fake = torch.randn(140, 4, generator=g, dtype=torch.float64) * 1.2
    results = [prdc(real, fake, k=4, chunk_size=c) for c in (1, 13, 10_000)]
    for r in results[1:]:
        assert r.scores() == results[0].scores()
        assert torch.equal(r.fake_nn_index, results[0].fake_nn_index)


def test_identical_sets_score_perfectly_and_disjoint_sets_score_zero() -> None:
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    same = prdc(x, x.clone(), k=5)
    assert same.precision == 1.0 and same.recall == 1.0 and same.coverage == 1.0
    far = prdc(x, x + 100.0, k=5)
    assert far.scores() == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_neighbour_helpers_match_brute_force() -> None:
    g = torch.Generator().manual_seed(2)
    x, q = (
        torch.randn(90, 6, generator=g, dtype=torch.float64),
        torch.randn(40, 6, generator=g, dtype=torch.float64),
    )
    d = np.sort(cdist(x.numpy(), x.numpy()), axis=1)[:, 1:4]
    np.testing.assert_allclose(neighbour_distances(x, 3, chunk_size=7).numpy(), d, atol=1e-12)
    dist, idx = nearest_neighbours(q, x, chunk_size=11)
    full = cdist(q.numpy(), x.numpy())
    np.testing.assert_array_equal(idx.numpy(), full.argmin(axis=1))
    np.testing.assert_allclose(dist.numpy(), full.min(axis=1), atol=1e-12)


def test_k_too_large_is_refused() -> None:
    with pytest.raises(ValueError, match="k must be"):
        prdc(torch.randn(5, 2), torch.randn(5, 2), k=5)


def test_precomputed_real_neighbours_give_the_same_scores() -> None:
    g = torch.Generator().manual_seed(0)
    real, fake, other = (torch.randn(n, 6, generator=g) for n in (80, 50, 40))
    first = prdc(real, fake, k=5, chunk_size=16)
    again = prdc(real, other, k=5, chunk_size=16, real_knn=first.real_knn)
    fresh = prdc(real, other, k=5, chunk_size=16)
    assert again.scores() == fresh.scores() and torch.equal(again.real_nn1, fresh.real_nn1)
    with pytest.raises(ValueError, match="real_knn must be 80 x 5"):
        prdc(real, other, k=5, real_knn=first.real_knn[:, :3])
