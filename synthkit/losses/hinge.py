"""Hinge adversarial loss (Lim & Ye, "Geometric GAN", 2017; used by SNGAN and BigGAN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))], in float32 (logits upcast)."""
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def g_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss: -E[D(G(z))], in float32 (logits upcast)."""
    return -fake_logits.float().mean()
