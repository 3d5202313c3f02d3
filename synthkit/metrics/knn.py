"""Weighted k-nearest-neighbour classifier on frozen features: the standard self-supervised monitor.

The protocol of Wu et al., 2018, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination" (CVPR), as used by solo-learn (``solo/utils/knn.py``) and lightly
(``lightly/utils/benchmarking/knn.py``): L2-normalise features, rank training points by cosine
similarity, take the top ``k``, weight each neighbour's vote by ``exp(similarity / temperature)``, sum the
weights per class and predict the argmax. Defaults ``k=200``, ``temperature=0.1`` follow those libraries.

Example::

    >>> train = torch.randn(100, 8); labels = (train[:, 0] > 0).long()
    >>> knn_accuracy(train, labels, train, labels, k=5)  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# one-hot votes per block of queries: at most this many elements (queries x k x classes)
ONE_HOT_BLOCK = 1 << 24


def class_votes(
    labels: torch.Tensor, weights: torch.Tensor, n_classes: int, *, one_hot: bool | None = None
) -> torch.Tensor:
    """Q x C sums of ``weights`` (Q x k) per class of ``labels`` (Q x k neighbours' classes).

    On CUDA ``scatter_add_`` adds with atomics, in an order that varies from run to run (and a near-tie's
    argmax with it), so there the votes are a sum of one-hot rows instead: deterministic, the neighbours
    added in the same order every time, in blocks of at most ``ONE_HOT_BLOCK`` elements. ``one_hot``
    forces one way (None: one-hot on CUDA, ``scatter_add_`` elsewhere, where it is sequential already).
    """
    if one_hot is None:
        one_hot = labels.device.type == "cuda"
    if not one_hot:
        votes = torch.zeros(labels.shape[0], n_classes, dtype=weights.dtype, device=weights.device)
        return votes.scatter_add_(1, labels, weights)
    rows = max(1, ONE_HOT_BLOCK // max(1, labels.shape[1] * n_classes))
    blocks = [
        (F.one_hot(lab, n_classes).to(w.dtype) * w.unsqueeze(-1)).sum(dim=1)
        for lab, w in zip(labels.split(rows), weights.split(rows), strict=True)
    ]
    return torch.cat(blocks) if blocks else weights.new_zeros(0, n_classes)


def _check(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor) -> None:
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            f"features must be N x D, got train {tuple(train_features.shape)} and test "
            f"{tuple(test_features.shape)}"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train and test features differ in dimension: {train_features.shape[1]} vs "
            f"{test_features.shape[1]}"
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(
            f"train_labels must have shape ({train_features.shape[0]},), got {tuple(train_labels.shape)}"
        )
    if train_features.shape[0] == 0:
        raise ValueError("kNN needs at least one training point")


def knn_k_problem(k: int, train_labels: torch.Tensor, key: str = "k") -> str | None:
    """Why ``k`` is too large for this train split, or None.

    With n_c training images per class, at most n_c of a query's k neighbours share its class even when the
    encoder ranks perfectly; above k = 2 n_c they are a minority of the vote, and the prediction drifts
    towards whichever classes the remaining neighbours come from (with nearly flat similarities, as early
    in training, towards chance). ``synthkit eval`` at k=200 over 256 digits images (25 per class) scored
    0.19 where the training monitor at k=20 showed 0.80. The protocol's k=200 (Wu et al., 2018) assumes
    hundreds to thousands of images per class (CIFAR-10: 5,000; ImageNet: ~1,300).
    """
    n = int(train_labels.numel())
    classes = int(torch.unique(train_labels).numel()) if n else 0
    if n == 0 or classes == 0:
        return None
    per_class = n // classes
    if k <= 2 * per_class:
        return None
    return (
        f"{key}={k} exceeds twice the {per_class} training images per class ({n} images, {classes} classes): "
        f"even a perfect encoder's own class is a minority of every query's neighbours, so the accuracy is "
        f"biased low; use k <= {per_class} (e.g. {max(1, min(20, per_class))})"
    )


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Predicted labels (int64, one per test row) of the weighted kNN classifier (Wu et al., 2018).

    Args:
        train_features: ``N x D`` features of the labelled reference set.
        train_labels: ``N`` integer labels in ``[0, num_classes)``.
        test_features: ``M x D`` features to classify.
        k: neighbours per query; clipped to ``N``.
        temperature: the vote of a neighbour with cosine similarity ``s`` is ``exp(s / temperature)``.
        num_classes: number of classes; defaults to ``max(train_labels) + 1``.
        chunk_size: test rows per similarity block, so memory is ``chunk_size x N`` whatever ``M`` is.

    Ties in the summed votes go to the lowest class index.
    """
    _check(train_features, train_labels, test_features)
    if k < 1 or temperature <= 0 or chunk_size < 1:
        raise ValueError(
            f"need k >= 1, temperature > 0, chunk_size >= 1; got {k}, {temperature}, {chunk_size}"
        )
    # float64 input stays float64 (exact references); half precision is promoted for stable exponentials.
    dtype = torch.promote_types(train_features.dtype, torch.float32)
    device = train_features.device
    train = F.normalize(train_features.to(dtype), dim=1)
    labels = train_labels.to(device=device, dtype=torch.int64)
    n_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"train_labels must lie in [0, {n_classes}), got [{lo}, {hi}]")
    k = min(k, train.shape[0])

    preds = []
    for start in range(0, test_features.shape[0], chunk_size):
        query = F.normalize(test_features[start : start + chunk_size].to(device=device, dtype=dtype), dim=1)
        sim, idx = (query @ train.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        preds.append(class_votes(labels[idx], weights, n_classes).argmax(dim=1))
    if not preds:
        return torch.empty(0, dtype=torch.int64, device=device)
    return torch.cat(preds)


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy in ``[0, 1]`` of :func:`knn_predict` on ``test_labels`` (Wu et al., 2018 protocol)."""
    if test_labels.shape != (test_features.shape[0],):
        raise ValueError(
            f"test_labels must have shape ({test_features.shape[0]},), got {tuple(test_labels.shape)}"
        )
    if test_features.shape[0] == 0:
        raise ValueError("kNN accuracy needs at least one test point")
    pred = knn_predict(
        train_features,
        train_labels,
        test_features,
        k=k,
        temperature=temperature,
        num_classes=num_classes,
        chunk_size=chunk_size,
    )
    return (pred == test_labels.to(pred.device)).double().mean().item()
