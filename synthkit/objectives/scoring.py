"""Hardness and pair similarity of samples under a run's encoder and objective: one definition for all.

docs/method.md, "Hardness": a sample's hardness is its per-sample CL loss under the current encoder. Here that
loss is measured the way a training step would see the sample: the samples and a fixed, seeded batch of real
images (``reference_batch``, ``train.batch_size`` of the training split) form one batch, every image has two
random views, the run's objective scores the views (a generated pair's two images are one positive group of
four views), and a sample's hardness is the mean loss of its two views as anchors. The encoder is in eval
mode. Pair similarity is the cosine of the backbone features h(x_a), h(x_b), also in eval mode.

The reference batch's two views are drawn once per scorer, from its own seed (``reference_view_seed``),
and encoded once: in eval mode an image's projection does not depend on the rest of its batch, so they are
reused for every chunk the scorer scores while the encoder's weights stay as they are (a change of any
weight, buffer or of the reference is noticed, and they are computed again). A chunk's own views are drawn
from the seed of its call. An objective whose per-view loss does not involve the other images of the batch
(``Objective.scores_against_batch`` False: MoCo, whose negatives are its queue) scores the samples
without the reference batch, which changes none of their losses.

The training loop's diffusion pools, ``synthkit generate``, encoder guidance and the audit's recomputed
hardness all call this module, so "hardness" means the same number everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from synthkit.data.views import Views, to_float
from synthkit.determinism import seeded
from synthkit.losses.nt_xent import per_sample_hardness
from synthkit.objectives.base import Objective


def reference_batch(real: torch.Tensor, batch_size: int, seed: int) -> torch.Tensor:
    """The fixed real batch hardness is measured against: ``batch_size`` images of ``real`` (uint8
    N x C x H x W) drawn without replacement by ``seed``, as floats in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(real), generator=g)[: min(batch_size, len(real))]
    return to_float(real[idx])


def reference_view_seed(seed: int) -> int:
    """The seed the reference batch's views are drawn from: -1 - ``seed`` (as torch takes it, 2**64 - 1 -
    ``seed``), never the seed of a chunk's views (``seed * 1_000_003 + first index``, non-negative)."""
    return -1 - seed


def pair_groups(n_pairs: int, offset: int = 0) -> torch.Tensor:
    """Group ids of interleaved pair members a0, b0, a1, b1, ...: both members of pair j share id j."""
    return torch.arange(offset, offset + n_pairs).repeat_interleave(2)


@dataclass
class _Reference:
    key: tuple
    v1: torch.Tensor
    v2: torch.Tensor
    z1: torch.Tensor
    z2: torch.Tensor


class Scorer:
    """The encoder (used in eval mode), its views, the run's objective and the real reference batch.

    Args:
        encoder: the bare encoder (not a DDP wrapper).
        views: the run's views.
        objective: the run's objective (its state, e.g. MoCo's queue, is read, never changed).
        reference: real images in [0, 1] on the encoder's device (``reference_batch``).
        seed: the reference's views are drawn from ``reference_view_seed(seed)`` (the seed ``reference`` was
            drawn with, by convention).
    """

    def __init__(
        self,
        encoder: nn.Module,
        views: Views,
        objective: Objective,
        reference: torch.Tensor,
        *,
        seed: int = 0,
    ) -> None:
        self.encoder, self.views, self.objective, self.reference = encoder, views, objective, reference
        self.seed = seed
        self._ref: _Reference | None = None

    @property
    def uses_reference(self) -> bool:
        return bool(getattr(self.objective, "scores_against_batch", True))

    def _state_key(self, dtype: torch.dtype) -> tuple:
        """What the reference's views and projections depend on: every tensor of the encoder and of the
        objective's modules (by storage and version counter: an optimizer step or a load changes it), the
        reference itself, and the dtype they are computed in."""
        tensors = [self.reference]
        for m in (self.encoder, *self.objective.modules().values()):
            tensors += [*m.parameters(), *m.buffers()]
        return (dtype, *((t.data_ptr(), t._version, t.shape) for t in tensors))

    def _reference(self, dtype: torch.dtype) -> _Reference:
        """The reference batch's two views and their projections (no gradient), computed once."""
        key = self._state_key(dtype)
        if self._ref is None or self._ref.key != key:
            with torch.no_grad(), seeded(reference_view_seed(self.seed)):
                v1, v2 = self.views.two_views(self.reference.to(dtype))
                # two forward passes, not one over both: the same numbers in eval mode, faster at these sizes
                self._ref = _Reference(key, v1, v2, self.encoder(v1), self.encoder(v2))
        return self._ref

    def _per_view(self, images: torch.Tensor, groups: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """Per-view losses of the reference (when the objective uses it) and the samples, and the number
        of reference images in front."""
        n = len(images)
        ids = torch.arange(n, device=images.device) if groups is None else groups.to(images.device)
        s1, s2 = self.views.two_views(images)
        z1, z2 = self.encoder(s1), self.encoder(s2)
        if not self.uses_reference:
            z, ids = torch.cat([z1, z2]), torch.cat([ids, ids])
            return self.objective.per_view(z, [s1, s2], ids, 0, train=False), 0
        ref = self._reference(images.dtype)
        n_ref = len(ref.v1)
        ids = torch.cat([torch.arange(n_ref, device=images.device), ids + n_ref])
        z = torch.cat([ref.z1, z1, ref.z2, z2])
        views = [ref.v1, s1, ref.v2, s2]
        return self.objective.per_view(z, views, torch.cat([ids, ids]), n_ref, train=False), n_ref

    def hardness_grad(self, images: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample hardness, differentiable w.r.t. ``images`` (encoder guidance); the samples' views come
        from the global RNG, so seed it around the call (``synthkit.determinism.seeded``)."""
        modules = [self.encoder, *self.objective.modules().values()]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            per_view, n_ref = self._per_view(images, groups)
            return per_sample_hardness(per_view)[n_ref:]
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)

    @torch.no_grad()
    def hardness(self, images: torch.Tensor, seed: int, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample hardness of ``images`` (floats in [0, 1]); ``groups`` gives pair members one id (None:
        every image its own). The samples' views are drawn from ``seed`` (modulo 2**63: the export derives it
        from a seed up to 2**63 - 1 and a sample index); the caller's RNG state (CPU and CUDA) is restored
        afterwards."""
        with seeded(seed % 2**63):
            return self.hardness_grad(images, groups).float()

    @torch.no_grad()
    def pair_similarity(self, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        """cos(h(x_a), h(x_b)) per pair, encoder in eval mode."""
        was = self.encoder.training
        self.encoder.eval()
        try:
            return F.cosine_similarity(
                self.encoder.features(x_a).float(), self.encoder.features(x_b).float(), dim=1
            )
        finally:
            self.encoder.train(was)
