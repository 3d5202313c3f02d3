"""Condition ids a generator samples with, and their files (``conditions.safetensors`` in ``final/``).

How they are made (k-means pseudo-classes of the encoder's features, refreshed during training, or the data's
labels) is the trainers' business: ``producers/conditions.py``. A frozen sampler only draws from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from synthkit.weights import load_state_dict, save_state_dict


@dataclass(frozen=True)
class Conditions:
    """Condition ids of real images, plus how they were derived (recorded in outputs).

    In-memory real data: ``labels`` has one id per real training image. Streamed real data: ``labels`` are
    the ids of the bounded sample k-means was fitted on (their frequencies are what generated samples draw),
    and ``centroids`` (k x d, unit norm) assign any batch by its features (``assign``).
    """

    labels: torch.Tensor  # int64: one per real training image, or per image of the fit sample
    num_classes: int  # 0 = unconditional
    source: str  # "kmeans" | "labels" | "none" | "model"
    centroids: torch.Tensor | None = None

    def assign(self, features: torch.Tensor) -> torch.Tensor:
        """The nearest centroid (cosine, as k-means was fitted on unit-norm features) of each feature row."""
        assert self.centroids is not None
        x = torch.nn.functional.normalize(features.float(), dim=1)
        return (x @ self.centroids.to(x.device).t()).argmax(dim=1)

    def probabilities(self) -> torch.Tensor:
        """Empirical frequency of each condition, used to draw conditions for generated samples."""
        counts = torch.bincount(self.labels, minlength=max(self.num_classes, 1)).float()
        return counts / counts.sum()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """``n`` condition ids drawn from the frequencies (on ``generator``'s device when one is given)."""
        if self.num_classes == 0:
            return None
        probs = self.probabilities()
        if generator is not None:
            probs = probs.to(generator.device)
        return torch.multinomial(probs, n, replacement=True, generator=generator)


def save_conditions(cond: Conditions, path: Path) -> dict[str, int | str]:
    """Write the conditions' tensors (safetensors) to ``path``; return what else ``load_conditions`` needs."""
    tensors = {"labels": cond.labels}
    if cond.centroids is not None:
        tensors["centroids"] = cond.centroids
    save_state_dict(tensors, path)
    return {"num_classes": cond.num_classes, "source": cond.source}


def load_conditions(path: Path, meta: dict) -> Conditions:
    """What ``save_conditions`` wrote (``meta`` is its return value, as recorded in JSON)."""
    tensors = load_state_dict(path)
    return Conditions(
        tensors["labels"], int(meta["num_classes"]), str(meta["source"]), tensors.get("centroids")
    )
