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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn

from synthkit.data.views import Views
from synthkit.losses.multi_positive import view_groups
from synthkit.losses.nt_xent import per_sample_hardness
from synthkit.objectives.base import Objective
from synthkit.producers.base import Contribution


@dataclass
class EncoderStep:
    """The prepared encoder (DDP-wrapped where Accelerate wrapped it), its optimizer, views and objective."""

    accelerator: Accelerator
    encoder: nn.Module
    views: Views
    optimizer: torch.optim.Optimizer
    objective: Objective

    def __call__(self, x_real: torch.Tensor, contribution: Contribution | None = None) -> dict[str, float]:
        acc = self.accelerator
        extra = contribution or Contribution()
        with acc.autocast():
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
            # differentiates through the augmentations and the encoder's stem only for the chunks that
            # need it (the synthetic ones)
            views = [self.views.two_views(c) for c in chunks]
            inputs = [v[0] for v in views] + [v[1] for v in views]
            z = self.encoder(torch.cat(inputs)) if len(chunks) == 1 else self.encoder(inputs)
            ids = view_groups([len(c) for c in chunks], paired).to(z.device)
            per_view = self.objective.per_view(
                z, inputs, torch.cat([ids, ids]), len(x_real), train=True, global_batch=True
            )
            # the mean over this process's views: with the gather's gradient and DDP's averaging, the
            # one-process gradient of the global batch's mean loss (synthkit.distributed)
            loss_cl = per_view.mean()
            loss = loss_cl if extra.loss is None else loss_cl + extra.loss
        self.optimizer.zero_grad(set_to_none=True)
        for opt in extra.optimizers:
            opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        self.optimizer.step()
        for opt in extra.optimizers:
            opt.step()
        self.objective.after_step(self.encoder, acc)
        rec = {"loss_cl": loss_cl.item(), **extra.records}
        if contribution is not None:
            hard = per_sample_hardness(per_view.detach())
            offset = 0
            sums: dict[str, list[float]] = {}
            for name, chunk in zip(names, chunks, strict=True):
                part = hard[offset : offset + len(chunk)]
                offset += len(chunk)
                total, count = sums.get(name, [0.0, 0])
                sums[name] = [total + float(part.sum()), count + len(chunk)]
            for name, (total, count) in sums.items():
                rec[f"hardness_{name}"] = total / count
        return rec
