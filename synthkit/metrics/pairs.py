"""Positive pairs (HPG): the distribution of their similarity and its trend over generator steps.

Hard positive pair generation (docs/method.md, "HPG") lowers the target similarity of a pair as training goes
on, so the similarity of exported pairs should fall with ``generator_step``. :func:`pair_similarity_summary`
gives the distribution, the mean per step, and the least-squares slope of similarity against step.

Example::

    >>> pair_similarity_summary([0.9, 0.8, 0.6, 0.5], [0, 0, 100, 100])["trend"]["slope_per_1k_steps"]
    -3.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthkit.data.inspect import describe

PAIR_SIMILARITY = "pair_similarity"


def pair_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"pair features must both be N x D, got {tuple(a.shape)} and {tuple(b.shape)}")
    return F.cosine_similarity(a.double(), b.double(), dim=1)


def pair_similarity_summary(similarities: Sequence[float], steps: Sequence[int | None]) -> dict[str, Any]:
    """Distribution of pair similarities, their mean per generator step, and the trend over steps.

    ``trend`` is None unless at least two distinct steps are known; ``slope_per_1k_steps`` is the
    least-squares slope of similarity against step, times 1000.
    """
    if len(similarities) != len(steps):
        raise ValueError("one step per similarity is needed (None where unknown)")
    if not similarities:
        raise ValueError("no pair similarities to summarise")
    sims = np.asarray(similarities, dtype=np.float64)
    by_step: dict[int, list[float]] = {}
    for s, step in zip(sims.tolist(), steps, strict=True):
        if step is not None:
            by_step.setdefault(int(step), []).append(s)
    per_step = [
        {"step": k, "count": len(v), "mean": float(np.mean(v)), "std": float(np.std(v))}
        for k, v in sorted(by_step.items())
    ]
    trend = None
    if len(by_step) >= 2:
        xs = np.array([k for k, v in by_step.items() for _ in v], dtype=np.float64)
        ys = np.array([s for v in by_step.values() for s in v], dtype=np.float64)
        slope = float(np.polyfit(xs, ys, 1)[0])
        trend = {"slope_per_1k_steps": round(slope * 1000, 12), "decreasing": slope < 0}
    return {"distribution": describe(sims.tolist()), "per_step": per_step, "trend": trend}
