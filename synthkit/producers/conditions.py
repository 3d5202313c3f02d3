"""Conditions without labels: k-means pseudo-classes over the encoder's backbone features.

METHOD.md, "Conditions without labels". Clusters are refreshed as the encoder improves; each refresh is
matched to the previous assignment (Hungarian matching on the overlap of the two labelings), so that
condition id j keeps meaning roughly the same group of images and the generator's class embeddings stay
useful across refreshes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate.utils import broadcast
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from synthkit.config import ConditionsConfig
from synthkit.encoders.model import extract_features

if TYPE_CHECKING:
    from accelerate import Accelerator

    from synthkit.data.sources import ImageSet


@dataclass(frozen=True)
class Conditions:
    """One condition id per real training image, plus how they were derived (recorded in outputs)."""

    labels: torch.Tensor  # int64, one per real training image
    num_classes: int  # 0 = unconditional
    source: str  # "kmeans" | "labels" | "none"

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


def num_conditions(cfg: ConditionsConfig, num_label_classes: int | None) -> int:
    if cfg.mode == "none":
        return 0
    if cfg.mode == "labels":
        if not num_label_classes:
            raise ValueError("conditions.mode=labels needs a data source with labels")
        return num_label_classes
    return cfg.k


def match_to_previous(new: np.ndarray, previous: np.ndarray, k: int) -> np.ndarray:
    """Relabel ``new`` cluster ids to maximise agreement with ``previous`` (Hungarian algorithm)."""
    overlap = np.zeros((k, k), dtype=np.int64)
    np.add.at(overlap, (new, previous), 1)
    rows, cols = linear_sum_assignment(-overlap)
    mapping = np.empty(k, dtype=np.int64)
    mapping[rows] = cols
    return mapping[new]


def kmeans_conditions(
    features: torch.Tensor, k: int, seed: int, previous: torch.Tensor | None = None
) -> torch.Tensor:
    """k-means on L2-normalised features (cosine geometry, as the contrastive loss uses)."""
    x = torch.nn.functional.normalize(features.float(), dim=1).numpy().astype(np.float64)
    if len(x) < k:
        raise ValueError(f"conditions.k={k} is larger than the number of real images ({len(x)})")
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x).astype(np.int64)
    if previous is not None:
        labels = match_to_previous(labels, previous.numpy(), k)
    return torch.from_numpy(labels)


def make_conditions(
    cfg: ConditionsConfig,
    features: torch.Tensor | None,
    true_labels: torch.Tensor | None,
    seed: int,
    previous: Conditions | None = None,
    num_label_classes: int | None = None,
) -> Conditions:
    """Build the condition assignment for the real training images in the configured mode."""
    if cfg.mode == "none":  # unconditional: the labels are never read, only their count is kept
        n = len(features) if features is not None else len(true_labels) if true_labels is not None else 0
        return Conditions(torch.zeros(n, dtype=torch.long), 0, "none")
    if cfg.mode == "labels":
        if true_labels is None:
            raise ValueError("conditions.mode=labels needs a data source with labels")
        return Conditions(true_labels.long(), num_label_classes or int(true_labels.max()) + 1, "labels")
    if features is None:
        raise ValueError("conditions.mode=kmeans needs encoder features of the real images")
    prev = previous.labels if previous is not None and previous.source == "kmeans" else None
    return Conditions(kmeans_conditions(features, cfg.k, seed, prev), cfg.k, "kmeans")


def refresh_conditions(
    cfg: ConditionsConfig,
    accelerator: Accelerator,
    encoder: torch.nn.Module,
    real: ImageSet,
    previous: Conditions | None,
    seed: int,
    num_classes: int,
) -> Conditions:
    """The conditions of the real images under ``encoder``, computed on the main process and broadcast, so
    every process agrees (k-means is not bit-stable across processes)."""
    labels = torch.zeros(len(real), dtype=torch.long, device=accelerator.device)
    if accelerator.is_main_process:
        feats = (
            extract_features(encoder, real.images, device=accelerator.device)
            if cfg.mode == "kmeans"
            else None
        )
        cond = make_conditions(
            cfg,
            feats,
            real.labels,
            seed=seed,
            previous=previous,
            num_label_classes=len(real.classes) if real.classes else None,
        )
        labels = cond.labels.to(accelerator.device)
    labels = broadcast(labels, from_process=0).cpu()
    return Conditions(labels, num_classes, cfg.mode)
