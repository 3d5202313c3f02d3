"""Hardness and pair similarity of samples under a run's encoder and objective: one definition for all.

docs/method.md, "Hardness": a sample's hardness is its per-sample CL loss under the current encoder. Here that
loss is measured the way a training step would see the sample: the samples and a fixed, seeded batch of real
images (``reference_batch``, ``train.batch_size`` of the training split) form one batch, every image gets two
fresh random views, the run's objective scores the views (a generated pair's two images are one positive group
of four views), and a sample's hardness is the mean loss of its two views as anchors. The encoder is in eval
mode. Pair similarity is the cosine of the backbone features h(x_a), h(x_b), also in eval mode.

The training loop's diffusion pools, ``synthkit generate``, encoder guidance and the audit's recomputed
hardness all call this module, so "hardness" means the same number everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synthkit.data.views import Views, to_float
from synthkit.losses.nt_xent import per_sample_hardness
from synthkit.objectives.base import Objective


def reference_batch(real: torch.Tensor, batch_size: int, seed: int) -> torch.Tensor:
    """The fixed real batch hardness is measured against: ``batch_size`` images of ``real`` (uint8
    N x C x H x W) drawn without replacement by ``seed``, as floats in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(real), generator=g)[: min(batch_size, len(real))]
    return to_float(real[idx])


def pair_groups(n_pairs: int, offset: int = 0) -> torch.Tensor:
    """Group ids of interleaved pair members a0, b0, a1, b1, ...: both members of pair j share id j."""
    return torch.arange(offset, offset + n_pairs).repeat_interleave(2)


class Scorer:
    """The encoder (used in eval mode), its views, the run's objective and the real reference batch.

    Args:
        encoder: the bare encoder (not a DDP wrapper).
        views: the run's views.
        objective: the run's objective (its state, e.g. MoCo's queue, is read, never changed).
        reference: real images in [0, 1] on the encoder's device (``reference_batch``).
    """

    def __init__(
        self, encoder: nn.Module, views: Views, objective: Objective, reference: torch.Tensor
    ) -> None:
        self.encoder, self.views, self.objective, self.reference = encoder, views, objective, reference

    def _per_view(self, images: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
        n_ref = len(self.reference)
        ids = torch.arange(n_ref + len(images), device=images.device)
        if groups is not None:  # the samples' own groups, after the reference images' ids
            ids[n_ref:] = groups.to(images.device) + n_ref
        v1, v2 = self.views.two_views(torch.cat([self.reference.to(images.dtype), images]))
        # two forward passes, not one over both: the same numbers in eval mode, and faster at these sizes
        z = torch.cat([self.encoder(v1), self.encoder(v2)])
        return self.objective.per_view(z, [v1, v2], torch.cat([ids, ids]), n_ref, train=False)

    def hardness_grad(self, images: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample hardness, differentiable w.r.t. ``images`` (encoder guidance); views from the global
        RNG, so seed it around the call."""
        modules = [self.encoder, *self.objective.modules().values()]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            return per_sample_hardness(self._per_view(images, groups))[len(self.reference) :]
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)

    @torch.no_grad()
    def hardness(self, images: torch.Tensor, seed: int, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample hardness of ``images`` (floats in [0, 1]); ``groups`` gives pair members one id (None:
        every image its own). The views are drawn from ``seed`` (modulo 2**63: the export derives it from
        a seed up to 2**63 - 1 and a sample index), leaving the caller's RNG alone."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed % 2**63)
            return self.hardness_grad(images, groups).float()

    @torch.no_grad()
    def pair_similarity(self, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        """cos(h(x_a), h(x_b)) per pair, encoder in eval mode."""
        was = self.encoder.training
        self.encoder.eval()
        try:
            return F.cosine_similarity(self.encoder.features(x_a), self.encoder.features(x_b), dim=1).float()
        finally:
            self.encoder.train(was)
