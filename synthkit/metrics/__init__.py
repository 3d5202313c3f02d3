"""Evaluation and audit metrics; one metric per module, each a pure function on tensors."""

from synthkit.metrics.knn import knn_accuracy, knn_predict
from synthkit.metrics.linear_probe import linear_probe_accuracy

__all__ = ["knn_accuracy", "knn_predict", "linear_probe_accuracy"]
