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

import copy

import torch
from torch import nn

from synthkit.config import HSGConfig
from synthkit.generators.cgan import build_cgan
from synthkit.generators.diffaugment import diff_augment
from synthkit.losses.hinge import d_hinge, g_hinge
from synthkit.producer_configs.cgan import CGanConfig


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


def ema_decay(decay: float, n: int) -> float:
    """The EMA's decay at its update after ``n`` earlier ones: min(decay, (1 + n) / (10 + n)).

    The warm-up (as in TensorFlow's ExponentialMovingAverage with num_updates, and diffusers' EMAModel)
    keeps a short run's EMA generator from being stuck near its random initialisation.
    """
    return min(decay, (1.0 + n) / (10.0 + n))


class EMA(nn.Module):
    """An exponential moving average of a module's parameters and floating-point buffers, with decay
    warm-up (:func:`ema_decay`); integer buffers (batch-norm's counters) are copied.

    The update is a few fused ``torch._foreach_lerp_`` kernels; the number of updates so far is a Python
    counter, so an update never reads a value back from the device (torch's ``AveragedModel`` reads its
    ``n_averaged`` once per parameter). The counter is mirrored in the buffer ``n_averaged`` (on the
    device) so that checkpoints keep it: the state dict has ``AveragedModel``'s keys (``n_averaged``,
    ``module.*``), and loading one sets the counter.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(module)
        self.decay = decay
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long))
        self.count = 0
        self.requires_grad_(False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.count = int(self.n_averaged)  # one read, at load time

    def reset(self) -> None:
        """Start over: the next update copies the module."""
        self.count = 0
        self.n_averaged.zero_()

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list, list]:
        avg = [*self.module.parameters(), *self.module.buffers()]
        cur = [*model.parameters(), *model.buffers()]
        if len(avg) != len(cur):
            raise ValueError("the EMA's module and the model have different parameters or buffers")
        fa, fc, ia, ic = [], [], [], []
        for a, c in zip(avg, cur, strict=True):
            if a.is_floating_point():
                fa.append(a)
                fc.append(c.detach())
            else:
                ia.append(a)
                ic.append(c.detach())
        return fa, fc, ia, ic

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        fa, fc, ia, ic = self._pairs(model)
        if self.count == 0:
            torch._foreach_copy_(fa, fc)
        else:
            torch._foreach_lerp_(fa, fc, 1.0 - ema_decay(self.decay, self.count))
        if ia:
            torch._foreach_copy_(ia, ic)
        self.count += 1
        self.n_averaged.fill_(self.count)


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


def ema_copy(generator: nn.Module, decay: float) -> EMA:
    """An EMA copy of ``generator`` (with decay warm-up), for sampling."""
    return EMA(generator, decay)


class HardSampleGAN(nn.Module):
    """HSG's modules: G, D and G's EMA copy, with D's loss and G's realism term.

    The cGAN trainer (``producers/cgan.py``) owns the order of operations of a joint step, and D's side of it
    (its optimizer and step, the realism terms) is ``producers/adversary.py``'s; this class holds the modules
    and G's optimizer, and knows how to score samples for D and for realism.
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

    def optimizer(self) -> torch.optim.Optimizer:
        """G's Adam; fused: one kernel per step, its step counters on the device (no host read)."""
        g = self.gen_cfg
        return torch.optim.Adam(self.generator.parameters(), lr=g.lr_g, betas=g.betas, fused=True)

    @torch.no_grad()
    def update_ema(self) -> None:
        self.ema.update_parameters(self.generator)

    @property
    def ema_generator(self) -> nn.Module:
        return self.ema.module
