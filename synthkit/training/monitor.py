"""The training monitor: weighted-kNN accuracy of the encoder's backbone features on the labelled test split.

Every ``train.knn_every`` epochs (and after the last) the main process extracts features of at most
:data:`MONITOR_MAX_TRAIN` real training images and of the test split and scores a weighted kNN classifier
(``synthkit/metrics/knn.py``); the loop logs it as the epoch's ``knn_acc``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from synthkit.config import PipelineConfig
from synthkit.data.sources import ImageSet
from synthkit.encoders.model import extract_features
from synthkit.metrics.knn import knn_accuracy, knn_k_problem

__all__ = ["MONITOR_MAX_TRAIN", "KnnMonitor"]

logger = logging.getLogger(__name__)

MONITOR_MAX_TRAIN = 10_000


class KnnMonitor:
    """The kNN monitor of one run (``train.knn_k``, ``train.knn_temperature``) on ``device``; a ``knn_k``
    that does not suit the data is warned about once."""

    def __init__(self, cfg: PipelineConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self._warned = False

    @torch.no_grad()
    def __call__(self, encoder: nn.Module, real: ImageSet, test: ImageSet) -> float:
        """Weighted-kNN accuracy of the backbone features (at most MONITOR_MAX_TRAIN training images)."""
        n = min(len(real), MONITOR_MAX_TRAIN)
        train_f = extract_features(encoder, real.images[:n], device=self.device)
        test_f = extract_features(encoder, test.images, device=self.device)
        assert real.labels is not None and test.labels is not None
        problem = knn_k_problem(self.cfg.train.knn_k, real.labels[:n], "train.knn_k")
        if problem and not self._warned:
            logger.warning("kNN monitor: %s", problem)
            self._warned = True
        return knn_accuracy(
            train_f,
            real.labels[:n],
            test_f,
            test.labels,
            k=self.cfg.train.knn_k,
            temperature=self.cfg.train.knn_temperature,
        )
