"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, eq. (1). For 2N views z (view i of image k pairs with view i+N), each view's
loss is -log softmax over the other 2N-1 views of its positive's similarity / tau.

Example::

    z1, z2 = f(views(x)), f(views(x))
    loss = nt_xent(z1, z2, temperature=0.5)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from synthkit.losses.precision import float32


def nt_xent_per_view(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Per-view NT-Xent losses, shape (2N,): rows 0..N-1 are anchors z1, rows N..2N-1 anchors z2.

    Args:
        z1: N x D projections of the first views.
        z2: N x D projections of the second views (row k is the positive of z1's row k).
        temperature: tau; similarities are cosine / tau.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be N x D, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    with float32(z1):  # logits and cross-entropy in float32 whatever the autocast
        z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)
        logits = z @ z.t() / temperature
        logits.fill_diagonal_(float("-inf"))
        targets = torch.cat([torch.arange(n, 2 * n, device=z.device), torch.arange(0, n, device=z.device)])
        return F.cross_entropy(logits, targets, reduction="none")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Mean NT-Xent over all 2N anchors (SimCLR's loss)."""
    return nt_xent_per_view(z1, z2, temperature).mean()


def per_sample_hardness(per_view: torch.Tensor) -> torch.Tensor:
    """Hardness of each of the N images: the mean loss of its two views as anchors (docs/method.md,
    "Hardness"), in float32."""
    n = per_view.shape[0] // 2
    per_view = per_view.float()
    return 0.5 * (per_view[:n] + per_view[n:])
