"""Hardness of samples under a run's encoder and objective (docs/method.md, "Hardness"), for many samples.

The samples are scored in chunks of ``batch_size``, each next to the scorer's fixed real reference batch,
with the chunk's views seeded by ``seed * 1_000_003 + first index``: the same chunking and seeding as
``synthkit generate``, so the audit's recomputed hardness of an exported set (same encoder, reference and
seed) equals the hardness recorded in it. The definition itself lives in ``objectives/scoring.py``.
"""

from __future__ import annotations

import torch

from synthkit.objectives.scoring import Scorer

HARDNESS = "hardness"


@torch.no_grad()
def hardness_of(
    scorer: Scorer, images: torch.Tensor, *, batch_size: int = 256, seed: int = 0, offset: int = 0
) -> torch.Tensor:
    """Per-sample hardness of ``images`` (float [0, 1], N x C x H x W), each image its own positive group.

    ``offset``: the index of ``images[0]`` in the whole set, when the set is scored in pieces (the
    streamed audit); pieces that start at multiples of ``batch_size`` give the values of one call.
    """
    device = scorer.reference.device
    out = [
        scorer.hardness(
            images[start : start + batch_size].to(device), seed * 1_000_003 + offset + start
        ).cpu()
        for start in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0)
