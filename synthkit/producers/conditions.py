"""Conditions without labels: k-means pseudo-classes over the encoder's backbone features.

docs/method.md, "Conditions without labels". Clusters are refreshed as the encoder improves; each refresh is
matched to the previous assignment (Hungarian matching on the overlap of the two labelings), so that
condition id j keeps meaning roughly the same group of images and the generator's class embeddings stay
useful across refreshes. A trainer inside a run gets its conditions through :class:`RunConditions`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.utils import broadcast
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from synthkit.config import ConditionsConfig
from synthkit.data.batches import FIT_EPOCH, sample_images
from synthkit.encoders.model import eval_features, extract_features
from synthkit.samplers.conditions import Conditions

if TYPE_CHECKING:
    from accelerate import Accelerator

    from synthkit.config import PipelineConfig
    from synthkit.data.sources import ImageSet
    from synthkit.producers.base import TrainContext


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
    return kmeans_fit(features, k, seed, previous)[0]


def kmeans_fit(
    features: torch.Tensor, k: int, seed: int, previous: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on L2-normalised features: the labels (matched to ``previous`` labels of the same images)
    and the k unit-norm centroids, in the order of the matched labels."""
    x = torch.nn.functional.normalize(features.float(), dim=1).numpy().astype(np.float64)
    if len(x) < k:
        raise ValueError(f"conditions.k={k} is larger than the number of real images ({len(x)})")
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x)
    labels = km.labels_.astype(np.int64)
    centroids = km.cluster_centers_
    if previous is not None:
        matched = match_to_previous(labels, previous.numpy(), k)
        order = np.empty(k, dtype=np.int64)
        order[matched[np.arange(len(labels))]] = labels  # new id -> old cluster index
        labels, centroids = matched, centroids[order]
    c = torch.nn.functional.normalize(torch.from_numpy(centroids).float(), dim=1)
    return torch.from_numpy(labels), c


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


def refresh_stream_conditions(
    cfg: ConditionsConfig,
    accelerator: Accelerator,
    encoder: torch.nn.Module,
    sample: Callable[[], torch.Tensor],
    previous: Conditions | None,
    seed: int,
    num_classes: int,
) -> Conditions:
    """Conditions for streamed real data: k-means on a bounded sample (``sample()``: uint8 images, drawn on
    the main process only) of the stream. Its centroids and cluster sizes are broadcast, so every process
    assigns batches and draws conditions alike; a refresh is matched to the previous one through the previous
    centroids' labels of the new sample."""
    if cfg.mode == "none":
        return Conditions(torch.zeros(0, dtype=torch.long), 0, "none")
    if cfg.mode != "kmeans":
        raise ValueError("streamed real data supports conditions.mode kmeans or none")
    dim = int(encoder.feature_dim)
    counts = torch.zeros(num_classes, dtype=torch.long, device=accelerator.device)
    centroids = torch.zeros(num_classes, dim, device=accelerator.device)
    if accelerator.is_main_process:
        feats = extract_features(encoder, sample(), device=accelerator.device)
        prev = previous.assign(feats) if previous is not None and previous.centroids is not None else None
        fitted, c = kmeans_fit(feats, num_classes, seed, prev)
        counts = torch.bincount(fitted, minlength=num_classes).to(accelerator.device)
        centroids = c.to(accelerator.device)
    counts = broadcast(counts, from_process=0).cpu()
    centroids = broadcast(centroids, from_process=0).cpu()
    # the sample's labels, rebuilt from the cluster sizes: the same frequencies on every process
    labels = torch.repeat_interleave(torch.arange(num_classes), counts)
    return Conditions(labels, num_classes, "kmeans", centroids)


class RunConditions:
    """The conditions of a trainer inside a run (``num_classes`` ids; 0: unconditional).

    ``fit`` computes them under the run's current encoder: for in-memory real data every image's id, for
    streamed data k-means on a bounded sample of the stream (its centroids assign any batch); ``of_batch``
    gives a real batch's ids and ``draw`` ids for generated samples, both on the batch's device without
    making the host wait for it (in-memory data).
    """

    def __init__(self, cfg: PipelineConfig, ctx: TrainContext, num_classes: int) -> None:
        self.cfg, self.ctx, self.num_classes = cfg, ctx, num_classes

    def fit(self, epoch: int, previous: Conditions | None) -> Conditions:
        """The conditions at ``epoch`` (seeded by it), matched to ``previous``; on every process alike."""
        cfg, ctx = self.cfg, self.ctx
        if ctx.real is None:  # streamed: k-means on a bounded sample, batches assigned by their features
            return refresh_stream_conditions(
                cfg.conditions,
                ctx.accelerator,
                ctx.encoder(),
                lambda: sample_images(ctx.batches, cfg.conditions.fit_samples, FIT_EPOCH + epoch),
                previous,
                seed=cfg.train.seed + epoch,
                num_classes=self.num_classes,
            )
        return refresh_conditions(
            cfg.conditions,
            ctx.accelerator,
            ctx.encoder(),
            ctx.real,
            previous,
            seed=cfg.train.seed + epoch,
            num_classes=self.num_classes,
        )

    def of_batch(self, cond: Conditions | None, index: Any, images: torch.Tensor) -> torch.Tensor | None:
        """A real batch's ids (``index``: its indices into the in-memory data): looked up, or assigned by the
        current encoder's features of ``images`` (streamed data)."""
        if not self.num_classes or cond is None:
            return None
        if cond.centroids is None:
            # non-blocking: a fresh host tensor, staged by the copy; the host does not wait for the device
            return cond.labels[index].to(images.device, non_blocking=True)
        return cond.assign(eval_features(self.ctx.encoder(), images))

    def draw(self, cond: Conditions | None, n: int) -> torch.Tensor | None:
        """``n`` ids drawn from ``cond``'s frequencies (the global generator), on the run's device."""
        c = cond.sample(n) if self.num_classes and cond is not None else None
        return None if c is None else c.to(self.ctx.accelerator.device, non_blocking=True)
