"""One training step, plain or joint; the loop and the step benchmark both call these.

``plain_step`` is SimCLR on real data. ``joint_step`` is HSG (METHOD.md, "HSG with a conditional GAN"):
(a) a D step on real vs generated, (b) G's realism term with D frozen, (c) one encoder pass over real and
synthetic views whose backward pass trains the encoder on L_CL and, through a gradient reversal scaled by
lambda_hard, trains G to increase it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn

from synthkit.data.views import Views
from synthkit.losses.nt_xent import nt_xent_per_view, per_sample_hardness
from synthkit.producers.hard_samples import HardSampleProducer, grad_reverse


@dataclass
class StepParts:
    """The prepared models and optimizers a step needs (DDP-wrapped where Accelerate wrapped them)."""

    accelerator: Accelerator
    encoder: nn.Module
    views: Views
    opt_enc: torch.optim.Optimizer
    temperature: float
    producer: HardSampleProducer | None = None
    generator: nn.Module | None = None
    discriminator: nn.Module | None = None
    opt_g: torch.optim.Optimizer | None = None
    opt_d: torch.optim.Optimizer | None = None


def _contrastive(parts: StepParts, real: torch.Tensor, synthetic: torch.Tensor | None = None) -> torch.Tensor:
    """Per-view NT-Xent of two fresh views of every real and synthetic image, in one encoder pass.

    Rows are [real, synthetic] views 1, then the same for views 2. Views of real and synthetic images are
    drawn separately and handed to the encoder as chunks, so autograd differentiates through the
    augmentations and the encoder's first layer for the synthetic images only.
    """
    v1, v2 = parts.views.two_views(real)
    if synthetic is None:
        z = parts.encoder(torch.cat([v1, v2]))
    else:
        s1, s2 = parts.views.two_views(synthetic)
        z = parts.encoder([v1, s1, v2, s2])
    return nt_xent_per_view(*z.chunk(2), temperature=parts.temperature)


def plain_step(parts: StepParts, x_real: torch.Tensor) -> dict[str, float]:
    acc = parts.accelerator
    with acc.autocast():
        loss = _contrastive(parts, x_real).mean()
    parts.opt_enc.zero_grad(set_to_none=True)
    acc.backward(loss)
    parts.opt_enc.step()
    return {"loss_cl": loss.item()}


def joint_step(
    parts: StepParts,
    x_real: torch.Tensor,
    c_real: torch.Tensor | None,
    z: torch.Tensor,
    c_fake: torch.Tensor | None,
    lambda_hard: float,
    use_synthetic: bool,
) -> dict[str, float]:
    acc, producer = parts.accelerator, parts.producer
    assert producer is not None and parts.generator is not None and parts.opt_g is not None
    assert parts.opt_d is not None
    with acc.autocast():
        fake = parts.generator(z, c_fake)
        # (a) D step on real vs generated (fake is detached inside)
        loss_d = producer.discriminator_loss(parts.discriminator, x_real, c_real, fake, c_fake)
    parts.opt_d.zero_grad(set_to_none=True)
    acc.backward(loss_d)
    parts.opt_d.step()
    with acc.autocast():
        # (b) realism term for G, with D frozen
        loss_adv = producer.adversarial_loss(fake, c_fake)
        # (c) one encoder pass over real + synthetic: the reversal turns the encoder's descent on L_CL into
        # G's ascent, scaled by lambda_hard; the encoder itself sees the synthetic images as plain data
        synthetic = grad_reverse(fake, lambda_hard) if use_synthetic else None
        per_view = _contrastive(parts, x_real, synthetic)
        loss_cl = per_view.mean()
    parts.opt_enc.zero_grad(set_to_none=True)
    parts.opt_g.zero_grad(set_to_none=True)
    acc.backward(loss_cl + loss_adv)
    parts.opt_enc.step()
    parts.opt_g.step()
    producer.update_ema()
    hard = per_sample_hardness(per_view.detach())
    n = len(x_real)
    rec = {
        "loss_cl": loss_cl.item(),
        "loss_d": loss_d.item(),
        "loss_g_adv": loss_adv.item(),
        "lambda_hard": lambda_hard,
        "hardness_real": hard[:n].mean().item(),
    }
    if use_synthetic:
        rec["hardness_syn"] = hard[n:].mean().item()
    return rec
