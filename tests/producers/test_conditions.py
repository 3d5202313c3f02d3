"""Label-free conditions: Hungarian matching, k-means pseudo-classes, sampling and the three modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from synthkit.config import ConditionsConfig
from synthkit.producers.conditions import (
    kmeans_conditions,
    make_conditions,
    match_to_previous,
    num_conditions,
)
from synthkit.samplers.conditions import Conditions


def _blobs(k: int = 4, per: int = 20, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """k tight clusters along distinct directions (k-means runs on L2-normalised features)."""
    rng = np.random.default_rng(seed)
    d = k + 2
    centres = 10.0 * np.eye(d)[:k]
    truth = np.repeat(np.arange(k), per)
    x = centres[truth] + rng.normal(scale=0.3, size=(k * per, d))
    order = rng.permutation(len(x))
    return torch.from_numpy(x[order]).float(), truth[order]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_to_previous_recovers_a_permuted_labeling(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 6
    previous = rng.integers(0, k, size=200)
    perm = rng.permutation(k)
    assert np.array_equal(match_to_previous(perm[previous], previous, k), previous)


def test_match_to_previous_maximises_agreement_under_noise() -> None:
    rng = np.random.default_rng(0)
    k = 5
    previous = rng.integers(0, k, size=500)
    new = rng.permutation(k)[previous]
    flip = rng.random(500) < 0.2  # 20% of points change cluster
    new[flip] = rng.integers(0, k, size=int(flip.sum()))
    matched = match_to_previous(new, previous, k)
    assert (matched == previous).mean() > 0.75
    # a relabeling only: the partition itself is unchanged
    assert adjusted_rand_score(new, matched) == pytest.approx(1.0)


def test_kmeans_finds_well_separated_blobs() -> None:
    x, truth = _blobs()
    labels = kmeans_conditions(x, k=4, seed=0)
    assert labels.dtype == torch.int64 and labels.shape == (len(x),)
    assert set(labels.tolist()) == {0, 1, 2, 3}
    assert adjusted_rand_score(truth, labels.numpy()) == pytest.approx(1.0)


def test_kmeans_uses_cosine_geometry() -> None:
    # two directions, each at two very different norms: cosine k-means groups by direction only
    x, truth = _blobs(k=2, per=20)
    scale = torch.where(torch.arange(len(x)) % 2 == 0, 1.0, 50.0)[:, None]
    labels = kmeans_conditions(x * scale, k=2, seed=0)
    assert adjusted_rand_score(truth, labels.numpy()) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_refresh_with_previous_keeps_ids_stable(seed: int) -> None:
    x, _ = _blobs()
    first = kmeans_conditions(x, k=4, seed=0)
    previous = torch.from_numpy(np.random.default_rng(seed).permutation(4))[first]  # any id order
    refreshed = kmeans_conditions(x, k=4, seed=seed, previous=previous)
    assert torch.equal(refreshed, previous)


def test_make_conditions_kmeans_matches_previous_kmeans_only() -> None:
    x, _ = _blobs()
    cfg = ConditionsConfig(mode="kmeans", k=4)
    first = make_conditions(cfg, x, None, seed=0)
    assert first.source == "kmeans" and first.num_classes == 4
    previous = Conditions((first.labels + 1) % 4, 4, "kmeans")
    assert torch.equal(make_conditions(cfg, x, None, seed=5, previous=previous).labels, previous.labels)


def test_k_larger_than_the_data_raises() -> None:
    with pytest.raises(ValueError, match="conditions.k"):
        kmeans_conditions(torch.randn(5, 3), k=10, seed=0)
    with pytest.raises(ValueError):
        make_conditions(ConditionsConfig(k=10), torch.randn(5, 3), None, seed=0)


def test_probabilities_are_the_empirical_frequencies() -> None:
    cond = Conditions(torch.tensor([0, 0, 0, 2, 2, 1, 0, 0]), 4, "kmeans")
    torch.testing.assert_close(cond.probabilities(), torch.tensor([5, 1, 2, 0]) / 8.0)


def test_sample_follows_the_empirical_probabilities() -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10 + [3] * 0)
    cond = Conditions(labels, 4, "kmeans")
    ids = cond.sample(20000, generator=torch.Generator().manual_seed(0))
    assert ids is not None and ids.dtype == torch.int64 and ids.shape == (20000,)
    freq = torch.bincount(ids, minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.6, 0.3, 0.1, 0.0]), atol=0.015, rtol=0)
    assert (ids == 3).sum() == 0  # a condition no real image has is never drawn


def test_sample_is_seeded_by_the_generator() -> None:
    cond = Conditions(torch.arange(10) % 5, 5, "kmeans")
    a = cond.sample(50, generator=torch.Generator().manual_seed(7))
    b = cond.sample(50, generator=torch.Generator().manual_seed(7))
    c = cond.sample(50, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mode_none_is_unconditional() -> None:
    cfg = ConditionsConfig(mode="none")
    assert num_conditions(cfg, 10) == 0
    cond = make_conditions(cfg, torch.randn(6, 3), torch.arange(6), seed=0)
    assert cond.num_classes == 0 and cond.source == "none"
    assert cond.labels.shape == (6,)
    assert cond.sample(4, generator=torch.Generator().manual_seed(0)) is None


def test_mode_none_needs_neither_features_nor_labels() -> None:
    cond = make_conditions(ConditionsConfig(mode="none"), None, None, seed=0)
    assert cond.num_classes == 0 and cond.sample(3) is None


def test_mode_labels_uses_the_true_labels() -> None:
    cfg = ConditionsConfig(mode="labels", allow_labels=True)
    assert num_conditions(cfg, 7) == 7
    y = torch.tensor([3, 1, 4, 1, 5], dtype=torch.int32)
    cond = make_conditions(cfg, torch.randn(5, 3), y, seed=0, num_label_classes=7)
    assert cond.source == "labels" and cond.num_classes == 7
    assert cond.labels.dtype == torch.int64 and torch.equal(cond.labels, y.long())
    # without the class count it is inferred from the labels
    assert make_conditions(cfg, None, y, seed=0).num_classes == 6


def test_mode_labels_needs_labels() -> None:
    cfg = ConditionsConfig(mode="labels", allow_labels=True)
    with pytest.raises(ValueError, match="labels"):
        num_conditions(cfg, None)
    with pytest.raises(ValueError, match="labels"):
        make_conditions(cfg, torch.randn(5, 3), None, seed=0)


def test_num_conditions_kmeans_is_k() -> None:
    assert num_conditions(ConditionsConfig(mode="kmeans", k=7), 10) == 7
    assert num_conditions(ConditionsConfig(mode="kmeans", k=7), None) == 7
