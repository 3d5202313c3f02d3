"""The discriminator's side of the cGAN trainer: one D judges every generator (HSG's and HPG's pair).

docs/method.md, "HSG with a conditional GAN": D is updated on real vs generated images (hinge loss,
DiffAugment), then gives each generator its realism term L_adv with D frozen. The joint step (``cgan.py``)
and the GAN pre-training (``gan_pretrain.py``) share both; the losses themselves are in ``hard_samples.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from synthkit.producer_configs.cgan import CGanConfig
from synthkit.producers.hard_samples import adversarial_loss, discriminator_loss

if TYPE_CHECKING:
    from accelerate import Accelerator


class Adversary:
    """D (``module``, the bare one), what ``accelerator.prepare`` made of it (``ddp``) and its optimizer."""

    def __init__(self, module: nn.Module, gen_cfg: CGanConfig) -> None:
        self.module, self.gen_cfg = module, gen_cfg
        self.ddp: nn.Module = module
        self.opt: Any = None

    def optimizer(self) -> torch.optim.Optimizer:
        """D's Adam, to be prepared with the module; fused: one kernel per step, and its step counters stay
        on the device (no host read)."""
        g = self.gen_cfg
        return torch.optim.Adam(self.module.parameters(), lr=g.lr_d, betas=g.betas, fused=True)

    def prepared(self, ddp: nn.Module, opt: Any) -> None:
        """What ``accelerator.prepare`` returned for the module and :meth:`optimizer`."""
        self.ddp, self.opt = ddp, opt

    def step(
        self,
        accelerator: Accelerator,
        real: torch.Tensor,
        c_real: torch.Tensor | None,
        fake: torch.Tensor,
        c_fake: torch.Tensor | None,
    ) -> torch.Tensor:
        """One update of D on real vs generated images (detached inside); its loss, left on the device."""
        with accelerator.autocast():
            loss = discriminator_loss(self.ddp, self.gen_cfg, real, c_real, fake, c_fake)
        self.opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        self.opt.step()
        return loss

    def realism(self, fake: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """L_adv of a generator's samples with D frozen (the bare D: it receives no gradient here); called
        under the caller's autocast."""
        return adversarial_loss(self.module, self.gen_cfg, fake, c)
