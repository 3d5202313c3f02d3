"""Hard sample generation (HSG) with a conditional GAN.

Wu, Wang, Zeng, Shi, Hu, "Synthetic Data Can Also Teach: Synthesizing Effective Data for Unsupervised
Visual Representation Learning", AAAI 2023: a generator trained jointly with the contrastive encoder in a
min-max game keeps producing samples that are hard for the encoder's current state.

Our formulation (docs/method.md, "HSG with a conditional GAN"): G minimises L_adv(G) - lambda_hard(t) * L_CL,
the encoder minimises L_CL on real + synthetic views. Both come from ONE encoder forward/backward: a
gradient-reversal layer between G's output and the views hands the encoder its descent direction and G the
(scaled) ascent direction on the same loss, i.e. simultaneous gradient descent-ascent. This keeps a joint step
close to the cost of a plain step on the enlarged batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from synthkit.config import CGanConfig, HSGConfig
from synthkit.generators.cgan import build_cgan
from synthkit.generators.diffaugment import diff_augment
from synthkit.losses.hinge import d_hinge, g_hinge


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; multiplies the incoming gradient by ``-scale`` (Ganin & Lempitsky, ICML 2015)."""
    return _GradReverse.apply(x, scale)


def hsg_lambda(cfg: HSGConfig, epoch_progress: float) -> float:
    """lambda_hard(t): 0 during warm-up, then a linear ramp to ``cfg.lambda_hard`` over ``ramp_epochs``."""
    t = epoch_progress - cfg.warmup_epochs
    if t < 0:
        return 0.0
    if cfg.ramp_epochs == 0:
        return cfg.lambda_hard
    return cfg.lambda_hard * min(1.0, t / cfg.ramp_epochs)


def _ema_with_warmup(decay: float):
    """EMA whose decay warms up as min(decay, (1 + n) / (10 + n)) after n updates.

    The warm-up (as in TensorFlow's ExponentialMovingAverage with num_updates, and diffusers' EMAModel)
    keeps a short run's EMA generator from being stuck near its random initialisation.
    """

    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        return averaged * d + current * (1.0 - d)

    return avg_fn


def discriminator_loss(
    discriminator: nn.Module,
    gen_cfg: CGanConfig,
    real: torch.Tensor,
    c_real: torch.Tensor | None,
    fake: torch.Tensor,
    c_fake: torch.Tensor | None,
) -> torch.Tensor:
    """Hinge loss of D on augmented real vs (detached) generated images, in one forward pass.

    D sees as many real images as generated ones (the first ``len(fake)`` of the real batch, which is
    already a random draw), the usual balanced GAN batch; this also keeps the D step cheap. With more
    generated images than real ones (several producers), the first ``len(real)`` generated ones are used.
    """
    n = min(len(real), len(fake))
    real, fake = real[:n], fake[:n]
    c_real = None if c_real is None else c_real[:n]
    c_fake = None if c_fake is None else c_fake[:n]
    x = diff_augment(torch.cat([real, fake.detach()]), gen_cfg.diffaugment)
    c = None if c_real is None else torch.cat([c_real, c_fake])
    logits = discriminator(x, c)
    return d_hinge(logits[:n], logits[n:])


def adversarial_loss(
    discriminator: nn.Module, gen_cfg: CGanConfig, fake: torch.Tensor, c_fake: torch.Tensor | None
) -> torch.Tensor:
    """L_adv(G) with D frozen. Takes the bare D (not a DDP wrapper): D receives no gradient here."""
    discriminator.requires_grad_(False)
    try:
        logits = discriminator(diff_augment(fake, gen_cfg.diffaugment), c_fake)
    finally:
        discriminator.requires_grad_(True)
    return g_hinge(logits)


def ema_copy(generator: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``generator`` (with decay warm-up), for sampling."""
    ema = AveragedModel(generator, avg_fn=_ema_with_warmup(decay), use_buffers=True)
    ema.requires_grad_(False)
    return ema


class HardSampleProducer(nn.Module):
    """Holds G, D and G's EMA copy, and performs the producer's parts of a joint step.

    The loop owns the order of operations (``train/joint.py``); this class only knows how to update D
    and how to score G's samples for realism.
    """

    def __init__(
        self,
        gen_cfg: CGanConfig,
        hsg_cfg: HSGConfig,
        channels: int,
        size: int,
        num_classes: int,
        *,
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        self.gen_cfg, self.hsg_cfg = gen_cfg, hsg_cfg
        self.num_classes = num_classes
        self.generator, self.discriminator = build_cgan(
            gen_cfg, channels, size, num_classes, load_weights=load_weights
        )
        self.ema = ema_copy(self.generator, gen_cfg.ema_decay)

    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        g = torch.optim.Adam(self.generator.parameters(), lr=self.gen_cfg.lr_g, betas=self.gen_cfg.betas)
        d = torch.optim.Adam(self.discriminator.parameters(), lr=self.gen_cfg.lr_d, betas=self.gen_cfg.betas)
        return g, d

    def discriminator_loss(
        self,
        discriminator: nn.Module,
        real: torch.Tensor,
        c_real: torch.Tensor | None,
        fake: torch.Tensor,
        c_fake: torch.Tensor | None,
    ) -> torch.Tensor:
        return discriminator_loss(discriminator, self.gen_cfg, real, c_real, fake, c_fake)

    def adversarial_loss(self, fake: torch.Tensor, c_fake: torch.Tensor | None) -> torch.Tensor:
        return adversarial_loss(self.discriminator, self.gen_cfg, fake, c_fake)

    @torch.no_grad()
    def update_ema(self) -> None:
        self.ema.update_parameters(self.generator)

    @property
    def ema_generator(self) -> nn.Module:
        return self.ema.module
