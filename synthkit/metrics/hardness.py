"""Hardness of samples under an encoder: their per-sample NT-Xent loss (METHOD.md's definition).

Computed the way ``synthkit generate`` records it (``synthkit/export.py``): each chunk of samples is put in
one batch with a fixed reference batch of real images, every image gets two random views, and a sample's
hardness is the mean loss of its two views as anchors. Seeded, so the same inputs give the same values.
"""

from __future__ import annotations

import torch

from synthkit.data.views import Views
from synthkit.encoders.model import Encoder
from synthkit.losses.nt_xent import nt_xent_per_view, per_sample_hardness

HARDNESS = "hardness"


@torch.no_grad()
def hardness_under_encoder(
    encoder: Encoder,
    views: Views,
    images: torch.Tensor,
    reference: torch.Tensor,
    *,
    temperature: float = 0.5,
    batch_size: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """Per-sample hardness of ``images`` (float [0, 1], N x C x H x W) next to ``reference`` real images."""
    was_training = encoder.training
    encoder.eval()
    out = []
    with torch.random.fork_rng(devices=[]):  # the views draw from the global RNG; leave the caller's alone
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size]
            torch.manual_seed(seed * 1_000_003 + start)
            v1, v2 = views.two_views(torch.cat([reference, chunk]))
            per_view = nt_xent_per_view(encoder(v1), encoder(v2), temperature=temperature)
            out.append(per_sample_hardness(per_view)[len(reference) :].float())
    encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
