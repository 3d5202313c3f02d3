"""Weighted kNN monitor (Wu et al., 2018): parity with a per-point numpy reference and invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthkit.metrics import knn_accuracy, knn_predict


def reference_knn(
    train: np.ndarray, labels: np.ndarray, test: np.ndarray, k: int, t: float, c: int
) -> np.ndarray:
    """The protocol written out one test point at a time."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    preds = []
    for q in test:
        sim = train @ (q / np.linalg.norm(q))
        nearest = np.argsort(-sim)[: min(k, len(train))]
        votes = np.zeros(c)
        for j in nearest:
            votes[labels[j]] += np.exp(sim[j] / t)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


def _random_problem(seed: int, n: int = 120, m: int = 50, d: int = 8, c: int = 5):
    rng = np.random.default_rng(seed)
    train, test = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    return train, rng.integers(0, c, size=n), test, rng.integers(0, c, size=m)


@pytest.mark.parametrize(("k", "t"), [(1, 0.1), (7, 0.1), (20, 0.5), (200, 0.1)])
def test_matches_reference(k: int, t: float) -> None:
    train, labels, test, test_labels = _random_problem(k)
    # Ties-free: continuous random features give distinct similarities, so the top-k set is unique.
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    sims = unit(train) @ unit(test).T
    assert all(np.diff(np.sort(col)).min() > 1e-9 for col in sims.T)
    expected = reference_knn(train, labels, test, k, t, 5)
    got = knn_predict(
        torch.from_numpy(train),
        torch.from_numpy(labels),
        torch.from_numpy(test),
        k=k,
        temperature=t,
        num_classes=5,
    )
    assert got.dtype == torch.int64 and got.tolist() == expected.tolist()
    acc = knn_accuracy(
        torch.from_numpy(train),
        torch.from_numpy(labels),
        torch.from_numpy(test),
        torch.from_numpy(test_labels),
        k=k,
        temperature=t,
        num_classes=5,
    )
    assert acc == pytest.approx(float(np.mean(expected == test_labels)))


def test_k_larger_than_train_size_is_clipped() -> None:
    train, labels, test, _ = _random_problem(0, n=12)
    x, y, q = torch.from_numpy(train), torch.from_numpy(labels), torch.from_numpy(test)
    assert torch.equal(knn_predict(x, y, q, k=500), knn_predict(x, y, q, k=12))
    assert knn_predict(x, y, q, k=500).tolist() == reference_knn(train, labels, test, 500, 0.1, 5).tolist()


def test_chunk_size_does_not_change_predictions() -> None:
    train, labels, test, _ = _random_problem(1, m=37)
    x, y, q = (
        torch.from_numpy(a).float() if a.dtype == np.float64 else torch.from_numpy(a)
        for a in (train, labels, test)
    )
    full = knn_predict(x, y, q, k=10)
    for chunk in (1, 5, 36, 1000):
        assert torch.equal(knn_predict(x, y, q, k=10, chunk_size=chunk), full)


def test_separable_clusters_are_perfect() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(4, 16) * 10
    y = torch.arange(200) % 4
    x = centers[y] + 0.1 * torch.randn(200, 16, generator=g)
    yt = torch.arange(40) % 4
    xt = centers[yt] + 0.1 * torch.randn(40, 16, generator=g)
    assert knn_accuracy(x, y, xt, yt) == 1.0
    # Scale invariance: features are L2-normalised first.
    assert knn_accuracy(3 * x, y, 0.5 * xt, yt, k=5) == 1.0


def test_bad_inputs_are_rejected() -> None:
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="dimension"):
        knn_predict(x, torch.zeros(10, dtype=torch.int64), torch.randn(3, 5))
    with pytest.raises(ValueError, match="train_labels"):
        knn_predict(x, torch.zeros(9, dtype=torch.int64), torch.randn(3, 4))
    with pytest.raises(ValueError, match="test_labels"):
        knn_accuracy(x, torch.zeros(10, dtype=torch.int64), torch.randn(3, 4), torch.zeros(2))


def test_k_above_the_images_per_class_is_a_problem_named() -> None:
    from synthkit.metrics.knn import knn_k_problem

    labels = torch.arange(256) % 10  # 25 per class, as the tiny pipeline's 256 digits
    problem = knn_k_problem(200, labels, "eval.knn_k")
    assert problem is not None and "eval.knn_k=200" in problem and "25 training images per class" in problem
    assert knn_k_problem(50, labels) is None and knn_k_problem(20, labels) is None  # own class >= half
    assert knn_k_problem(51, labels) is not None
    assert knn_k_problem(200, torch.arange(1437) % 10) is None  # the digits' 143 per class: k=200 is fine
    assert knn_k_problem(5, torch.zeros(0, dtype=torch.long)) is None


def test_one_hot_votes_equal_scatter_votes() -> None:
    """The CUDA path (one-hot sums, deterministic) and the scatter path give the same votes."""
    from synthkit.metrics.knn import class_votes

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (50, 9), generator=g)
    weights = torch.rand(50, 9, generator=g, dtype=torch.float64)
    scatter = class_votes(labels, weights, 7, one_hot=False)
    torch.testing.assert_close(class_votes(labels, weights, 7, one_hot=True), scatter)
    assert scatter.sum(1).allclose(weights.sum(1)) and scatter[:, 3].allclose(
        (weights * (labels == 3)).sum(1)
    )
    assert class_votes(labels[:0], weights[:0], 7, one_hot=True).shape == (0, 7)
