"""GAN pre-training: ``generator.pretrain_steps`` steps of one generator against D on realism alone.

Run by the cGAN trainer (``cgan.py``) before the encoder's first step, under the conditions of epoch 0 (the
encoder does not change meanwhile). Each step is a D step on a real batch vs ``b_fake`` samples, then the
generator's step on its realism term and its EMA's update, as in the joint step without the encoder.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from synthkit.data.views import to_float
from synthkit.distributed import reduce_values
from synthkit.producers.adversary import Adversary
from synthkit.producers.base import TrainContext
from synthkit.producers.conditions import RunConditions
from synthkit.progress import Phase

if TYPE_CHECKING:
    from synthkit.samplers.conditions import Conditions

# the pre-training's passes over the real batches use the batches' own permutations at "epochs" the
# encoder's epochs never reach
PRETRAIN_EPOCH_BASE = 1_000_000


class GanPretraining:
    """The pre-training of a run (``ctx``) against its ``adversary``, conditions drawn by ``conditions``;
    progress is reported under ``logger`` (the trainer's)."""

    def __init__(
        self, ctx: TrainContext, adversary: Adversary, conditions: RunConditions, logger: logging.Logger
    ) -> None:
        self.ctx, self.adversary, self.conditions, self.logger = ctx, adversary, conditions, logger

    def run(
        self, generator: nn.Module, opt: Any, ema: Any, cond: Conditions | None, b_fake: int, which: str
    ) -> int:
        """Train ``generator`` (prepared; its optimizer ``opt``, its EMA ``ema``) under ``cond``; the number
        of generator updates done (``generator.pretrain_steps``)."""
        acc, steps = self.ctx.accelerator, self.ctx.cfg.generator.pretrain_steps
        phase = Phase(
            f"pretraining {which}",
            steps,
            progress=self.ctx.progress,
            logger=self.logger,
            main=acc.is_main_process,
            detail=f" of realism alone, {b_fake} samples a step",
        )
        with phase:
            self._steps(phase, generator, opt, ema, cond, b_fake)
        return steps

    def _steps(
        self, phase: Phase, gen: nn.Module, opt: Any, ema: Any, cond: Conditions | None, b_fake: int
    ) -> None:
        ctx, adversary, steps = self.ctx, self.adversary, self.ctx.cfg.generator.pretrain_steps
        acc, device, z_dim = ctx.accelerator, ctx.accelerator.device, ctx.cfg.generator.z_dim
        done, pass_ = 0, 0
        while done < steps:
            for idx, images in ctx.batches.epoch(PRETRAIN_EPOCH_BASE + pass_):
                x_real = to_float(images).to(device)
                c_real = self.conditions.of_batch(cond, idx, x_real)
                c_fake = self.conditions.draw(cond, b_fake)
                with acc.autocast():
                    fake = gen(torch.randn(b_fake, z_dim, device=device), c_fake)
                loss_d = adversary.step(acc, x_real, c_real, fake, c_fake)
                with acc.autocast():
                    loss_g = adversary.realism(fake, c_fake)
                opt.zero_grad(set_to_none=True)
                acc.backward(loss_g)
                opt.step()
                ema.update_parameters(acc.unwrap_model(gen))
                done += 1
                phase.update()
                if done % ctx.cfg.train.log_every == 0 or done == steps:
                    losses = reduce_values({"loss_d": loss_d.item(), "loss_g_adv": loss_g.item()}, device)
                    ctx.log({"pretrain_step": done, **losses})
                    phase.result(**losses)
                if done == steps:
                    break
            pass_ += 1
