"""One encoder step: real images plus whatever the producer contributes, in one forward/backward pass.

The loop and the step benchmark both call :class:`EncoderStep`. The producer's contribution (its synthetic
chunks, its generator loss and the optimizers of that loss) rides on the same backward pass: for HSG the
hard chunk reaches the encoder through a gradient reversal, so the one pass gives the encoder its descent on
the contrastive loss and the generator its ascent (docs/method.md, "HSG with a conditional GAN"). Rows of the
per-view losses are [view 1 of every image, view 2 of every image], images in chunk order [real, chunks...];
a chunk with a partner (a pair's b images) forms positive groups of four views with it.

Under data parallelism each process holds one share of the global batch (``train.batch_size`` real images
over all processes, and each process's synthetic chunks); the objective scores this process's views against
every process's (``Objective.per_view(global_batch=True)``), so the loss, each sample's hardness and, after
DDP's averaging, the gradient are those of one process holding the whole batch. The records returned are
this process's (the loop reduces them over processes before logging).

Precision: the views are computed in float32 outside autocast, the encoder (and MoCo's key encoder) under
``train.mixed_precision``'s autocast, and every loss, hardness and similarity in float32 whatever the
autocast (``synthkit.losses.precision``). A bf16 step and an fp32 step agree on the loss and the hardness to
the encoder's own bf16 rounding (``tests/training/test_precision.py`` states the tolerance).

Host syncs: none. The step reads nothing back from the device: its records are 0-d tensors (the loop reads
them once per ``train.log_every``, ``training/records.py``), the group ids are made once per chunk layout,
and the losses skip their validity checks (the ids are valid by construction). fp16 with a producer's
optimizers is refused: Accelerate's GradScaler would step (and update its scale) once per optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from synthkit.data.views import Views
from synthkit.errors import RunError
from synthkit.losses.multi_positive import view_groups
from synthkit.losses.nt_xent import per_sample_hardness
from synthkit.losses.precision import float32
from synthkit.objectives.base import Objective
from synthkit.producers.base import Contribution

#: why fp16 and a producer's optimizers do not mix (also checked on the config, before a run starts)
FP16_SEVERAL_OPTIMIZERS = (
    "train.mixed_precision=fp16 steps Accelerate's one GradScaler once per optimizer, and this step has "
    "several (the encoder's and the generators'): use --train.mixed_precision=bf16 (or no)"
)


@dataclass
class EncoderStep:
    """The prepared encoder (DDP-wrapped where Accelerate wrapped it), its optimizer, views and objective."""

    accelerator: Accelerator
    encoder: nn.Module
    views: Views
    optimizer: torch.optim.Optimizer
    objective: Objective
    _groups: dict[tuple[tuple[int, ...], tuple[bool, ...]], torch.Tensor] = field(
        default_factory=dict, init=False, repr=False
    )

    def _group_ids(self, sizes: list[int], paired: list[bool], device: torch.device) -> torch.Tensor:
        """The rows' group ids on the device, made once per chunk layout (no copy to the device per step)."""
        key = (tuple(sizes), tuple(paired))
        ids = self._groups.get(key)
        if ids is None:
            one = view_groups(sizes, paired)
            ids = self._groups[key] = torch.cat([one, one]).to(device)
        return ids

    def __call__(self, x_real: torch.Tensor, contribution: Contribution | None = None) -> dict[str, Any]:
        acc = self.accelerator
        extra = contribution or Contribution()
        if extra.optimizers and acc.scaler is not None:  # fp16: one GradScaler, several optimizers
            raise RunError(FP16_SEVERAL_OPTIMIZERS)
        chunks, paired, names = [x_real], [False], ["real"]
        for chunk in extra.chunks:
            if not len(chunk.images):
                continue
            chunks.append(chunk.images)
            names.append(chunk.name)
            if chunk.partner is None:
                paired.append(False)
            else:
                chunks.append(chunk.partner)
                paired += [True, False]
                names.append(chunk.name)
        # views of each chunk are drawn separately and handed to the encoder as chunks, so autograd
        # differentiates through the augmentations and the encoder's stem only for the chunks that need it
        # (the synthetic ones). The views are image operations on float32 images: out of autocast.
        with float32(x_real):
            views = [self.views.two_views(c) for c in chunks]
        inputs = [v[0] for v in views] + [v[1] for v in views]
        with acc.autocast():
            z = self.encoder(torch.cat(inputs)) if len(chunks) == 1 else self.encoder(inputs)
            ids = self._group_ids([len(c) for c in chunks], paired, z.device)
            # float32 whatever the autocast (synthkit.losses.precision); MoCo's key encoder runs under it
            per_view = self.objective.per_view(z, inputs, ids, len(x_real), train=True, global_batch=True)
        # the mean over this process's views: with the gather's gradient and DDP's averaging, the
        # one-process gradient of the global batch's mean loss (synthkit.distributed)
        loss_cl = per_view.float().mean()
        loss = loss_cl if extra.loss is None else loss_cl + extra.loss
        self.optimizer.zero_grad(set_to_none=True)
        for opt in extra.optimizers:
            opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        self.optimizer.step()
        for opt in extra.optimizers:
            opt.step()
        self.objective.after_step(self.encoder, acc)
        # records stay on the device (0-d tensors): the loop reads them once per train.log_every
        rec: dict[str, Any] = {"loss_cl": loss_cl.detach(), **extra.records}
        if contribution is not None:
            hard = per_sample_hardness(per_view.detach())
            offset = 0
            sums: dict[str, list] = {}
            for name, chunk in zip(names, chunks, strict=True):
                part = hard[offset : offset + len(chunk)]
                offset += len(chunk)
                total, count = sums.get(name, [0.0, 0])
                sums[name] = [part.sum() + total, count + len(chunk)]
            for name, (total, count) in sums.items():
                rec[f"hardness_{name}"] = total / count
        return rec
