"""Diversity and coverage of conditions and classes.

A generator that ignores part of its conditions, or collapses onto a few classes, shows it here:

- :func:`condition_coverage`: counts per generator condition (k-means cluster or label) and their entropy;
  ``normalized_entropy`` is 1 for a uniform spread over ``num_conditions`` and 0 for a single condition;
- :func:`class_coverage`: when the real data has labels, generated samples get the class their real
  neighbours vote for (weighted kNN in the audit's feature space), and each class gets its share of
  generated samples and its *coverage* (Naeem et al., 2020) restricted to that class's real images.

Example::

    >>> condition_coverage([0, 0, 1, 1], num_conditions=2)["normalized_entropy"]
    1.0
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

CONDITION_COVERAGE, CLASS_COVERAGE = "condition_coverage", "class_coverage"


def _entropy(counts: Sequence[int]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c > 0) if total else 0.0


def condition_coverage(conditions: Sequence[Any], num_conditions: int | None = None) -> dict[str, Any]:
    """Counts and entropy (nats) of the ``conditions`` of the samples; None entries are unconditioned.

    Args:
        conditions: one condition per sample (int, or None for an unconditioned sample).
        num_conditions: how many conditions the generator has (e.g. k-means K); defaults to the number seen.
    """
    counts = Counter(c for c in conditions if c is not None)
    keys = sorted(counts, key=lambda c: (not isinstance(c, int), str(c) if not isinstance(c, int) else c))
    n_cond = num_conditions if num_conditions is not None else len(counts)
    h = _entropy(list(counts.values()))
    return {
        "counts": {str(k): counts[k] for k in keys},
        "unconditioned": sum(c is None for c in conditions),
        "num_conditions": n_cond,
        "conditions_seen": len(counts),
        "entropy": h,
        "normalized_entropy": h / math.log(n_cond) if n_cond > 1 else (1.0 if counts else 0.0),
        "effective_conditions": math.exp(h) if counts else 0.0,
    }


def class_coverage(
    real_labels: torch.Tensor,
    real_covered: torch.Tensor,
    fake_predicted: torch.Tensor,
    num_classes: int,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-class share of generated samples and per-class coverage.

    Args:
        real_labels: ``N`` true labels of the real images.
        real_covered: ``N`` booleans: the real image's k-NN ball holds a generated sample (from PRDC).
        fake_predicted: ``M`` predicted classes of the generated samples.
        num_classes: number of classes.
        classes: class names, for the report.
    """
    if real_labels.shape != real_covered.shape:
        raise ValueError("real_labels and real_covered must have one entry per real image")
    per_class = []
    fake_counts = torch.bincount(fake_predicted.long(), minlength=num_classes).tolist()
    m = max(int(fake_predicted.numel()), 1)
    for c in range(num_classes):
        mask = real_labels == c
        per_class.append(
            {
                "class": c,
                "name": classes[c] if classes is not None and c < len(classes) else str(c),
                "real": int(mask.sum()),
                "coverage": real_covered[mask].double().mean().item() if mask.any() else None,
                "generated": fake_counts[c],
                "generated_share": fake_counts[c] / m,
            }
        )
    h = _entropy(fake_counts)
    return {
        "per_class": per_class,
        "classes_generated": sum(1 for c in fake_counts if c > 0),
        "num_classes": num_classes,
        "entropy": h,
        "normalized_entropy": h / math.log(num_classes) if num_classes > 1 else 1.0,
        "min_class_coverage": min(
            (p["coverage"] for p in per_class if p["coverage"] is not None), default=None
        ),
    }


CONDITION_SEPARABILITY = "condition_separability"


@torch.no_grad()
def condition_separability(
    features: torch.Tensor,
    conditions: Sequence[Any],
    *,
    k: int = 10,
    max_points: int = 2000,
    seed: int = 0,
    chunk_size: int = 1024,
) -> dict[str, Any] | None:
    """Whether the samples' features tell their conditions apart: leave-one-out kNN accuracy.

    Each sample's condition is predicted by a majority vote of its ``k`` nearest *other* samples (Euclidean
    distance in the audit's feature space; ties to the lowest condition), on a seeded subsample of at most
    ``max_points`` conditioned samples. ``chance`` is the share of the most frequent condition (what a vote
    that ignores the features gets); ``chance_corrected`` is ``(accuracy - chance) / (1 - chance)``: near 0
    when the generator ignores its condition (condition collapse), near 1 when each condition is its own
    region of feature space.

    Returns None when it cannot be measured: fewer than two conditions, or fewer than ``k + 1`` samples.
    """
    keep = [i for i, c in enumerate(conditions) if isinstance(c, int) and not isinstance(c, bool)]
    if len(keep) > max_points:
        pick = torch.randperm(len(keep), generator=torch.Generator().manual_seed(seed))[:max_points]
        keep = sorted(keep[i] for i in pick.tolist())
    labels_raw = [conditions[i] for i in keep]
    values = sorted(set(labels_raw))
    if len(values) < 2 or len(keep) <= k:
        return None
    index = {v: j for j, v in enumerate(values)}
    y = torch.tensor([index[c] for c in labels_raw], dtype=torch.int64)
    x = features[torch.tensor(keep, device=features.device)].double()
    correct = 0
    for start in range(0, x.shape[0], chunk_size):
        d = torch.cdist(x[start : start + chunk_size], x)
        rows = torch.arange(d.shape[0], device=d.device)
        d[rows, rows + start] = float("inf")  # leave the sample itself out
        nearest = d.topk(k, dim=1, largest=False).indices.cpu()
        votes = torch.zeros(d.shape[0], len(values), dtype=torch.int64)
        votes.scatter_add_(1, y[nearest], torch.ones_like(nearest))
        correct += int((votes.argmax(dim=1) == y[start : start + chunk_size]).sum())
    accuracy = correct / len(keep)
    chance = float(torch.bincount(y).max()) / len(keep)
    return {
        "accuracy": accuracy,
        "chance": chance,
        "chance_corrected": (accuracy - chance) / (1.0 - chance) if chance < 1 else 0.0,
        "conditions": len(values),
        "points": len(keep),
        "k": k,
    }
