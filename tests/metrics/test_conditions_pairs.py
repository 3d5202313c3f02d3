"""Condition/class coverage and the pair-similarity trend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthkit.metrics.conditions_coverage import class_coverage, condition_coverage
from synthkit.metrics.pairs import pair_cosine, pair_similarity_summary


def test_condition_coverage_counts_and_entropy() -> None:
    uniform = condition_coverage([0, 1, 2, 3] * 5, num_conditions=4)
    assert uniform["normalized_entropy"] == pytest.approx(1.0)
    assert uniform["counts"] == {"0": 5, "1": 5, "2": 5, "3": 5}
    collapsed = condition_coverage([2] * 20 + [None], num_conditions=4)
    assert collapsed["normalized_entropy"] == 0.0 and collapsed["conditions_seen"] == 1
    assert collapsed["unconditioned"] == 1
    half = condition_coverage([0, 1] * 10, num_conditions=4)
    assert half["entropy"] == pytest.approx(math.log(2)) and half["effective_conditions"] == pytest.approx(2)


def test_class_coverage_per_class() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    covered = torch.tensor([True, False, True, True, False, False])
    pred = torch.tensor([0, 1, 1, 1])
    cc = class_coverage(labels, covered, pred, 3, ["a", "b", "c"])
    assert [p["coverage"] for p in cc["per_class"]] == [0.5, 1.0, 0.0]
    assert [p["generated"] for p in cc["per_class"]] == [1, 3, 0]
    assert cc["classes_generated"] == 2 and cc["min_class_coverage"] == 0.0


def test_pair_similarity_trend_over_steps() -> None:
    summary = pair_similarity_summary([0.9, 0.8, 0.6, 0.5, 0.3], [0, 0, 100, 100, 200])
    assert summary["trend"]["decreasing"] is True
    slope = np.polyfit([0, 0, 100, 100, 200], [0.9, 0.8, 0.6, 0.5, 0.3], 1)[0]
    assert summary["trend"]["slope_per_1k_steps"] == pytest.approx(1000 * slope)
    assert [p["step"] for p in summary["per_step"]] == [0, 100, 200]
    assert summary["per_step"][0]["mean"] == pytest.approx(0.85)
    assert pair_similarity_summary([0.5, 0.4], [None, None])["trend"] is None


def test_pair_cosine() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    assert pair_cosine(a, b).tolist() == [1.0, 0.0]
