"""Hard positive pair generation (HPG) with a pair of conditional generators.

Wu, Wang, Zeng, Shi, Hu, "Synthetic Data Can Also Teach", AAAI 2023: a pair of generators produces two
similar-but-distinct samples that form a positive pair, and the pair's similarity is lowered as training
goes on, so that positives get harder as the encoder learns.

Our formulation (docs/method.md, "HPG with a pair of generators"): G_a and G_b take the same (z, c); G_b
starts as a copy of G_a and is free to drift (it starts perturbed by ``hpg.init_noise``: at s = 1 the cosine's
gradient vanishes, so an exact copy could not be pushed apart by the pair term). With s = cos(h(x_a), h(x_b))
in the encoder's backbone space (the encoder fixed), the generators minimise

    L_adv(G_a) + L_adv(G_b) + lambda_pair * (relu(s - s*(t)) + mu * relu(s*(t) - s)),

"distinct enough" (the first term) "but still a positive" (the second). In the encoder's step the two
views of x_a and the two of x_b form one positive group (``losses/multi_positive.py``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from synthkit.config import HPGConfig
from synthkit.generators.cgan import Generator
from synthkit.losses.precision import float32
from synthkit.producer_configs.cgan import CGanConfig
from synthkit.producers.hard_samples import ema_copy


def schedule_progress(cfg: HPGConfig, epoch_progress: float, total_epochs: int) -> float:
    """Fraction in [0, 1] of the way from the end of HPG's warm-up to the end of training."""
    span = total_epochs - cfg.warmup_epochs
    if span <= 0:
        return 1.0 if epoch_progress >= cfg.warmup_epochs else 0.0
    return min(1.0, max(0.0, (epoch_progress - cfg.warmup_epochs) / span))


def target_similarity(
    cfg: HPGConfig, progress: float, real_positive_similarity: float | torch.Tensor | None = None
) -> float | torch.Tensor:
    """s*(t) at ``progress`` in [0, 1] (see :func:`schedule_progress`).

    ``linear``: s_start + (s_end - s_start) * p. ``cosine``: s_end + (s_start - s_end) * (1 + cos(pi p)) / 2,
    flat at both ends. ``adaptive``: the encoder's current similarity of real augmented positives minus
    ``adaptive_margin``, clipped to [s_end, s_start] (s_start before any measurement); a tensor when the
    measurement is one (it stays on the device).
    """
    p = min(1.0, max(0.0, progress))
    if cfg.schedule == "linear":
        return cfg.s_start + (cfg.s_end - cfg.s_start) * p
    if cfg.schedule == "cosine":
        return cfg.s_end + (cfg.s_start - cfg.s_end) * 0.5 * (1.0 + math.cos(math.pi * p))
    if real_positive_similarity is None:
        return cfg.s_start
    if isinstance(real_positive_similarity, torch.Tensor):
        return torch.clamp(real_positive_similarity - cfg.adaptive_margin, cfg.s_end, cfg.s_start)
    return min(cfg.s_start, max(cfg.s_end, real_positive_similarity - cfg.adaptive_margin))


def pair_loss(
    similarity: torch.Tensor, target: float | torch.Tensor, lambda_pair: float, mu: float
) -> torch.Tensor:
    """lambda_pair * mean(relu(s - s*) + mu * relu(s* - s)) over the pairs."""
    return lambda_pair * (F.relu(similarity - target) + mu * F.relu(target - similarity)).mean()


class AdaptiveTarget:
    """An EMA of the encoder's mean backbone similarity of two augmented views of a real image (a 0-d
    tensor on the device once measured: updating it reads nothing back to the host)."""

    def __init__(self, momentum: float, value: float | torch.Tensor | None = None) -> None:
        self.momentum, self.value = momentum, value

    def update(self, measured: float | torch.Tensor) -> float | torch.Tensor:
        m = self.momentum
        self.value = measured if self.value is None else m * self.value + (1 - m) * measured
        return self.value

    def restore(self, value: Any, device: torch.device | str) -> None:
        """The value a checkpoint recorded (None: nothing measured yet), as a tensor on ``device``."""
        self.value = None if value is None else torch.tensor(float(value), device=device)


@torch.no_grad()
def _perturb(module: nn.Module, noise: float, generator: torch.Generator | None = None) -> None:
    """Add Gaussian noise of ``noise`` times each parameter's own scale (its std, or |p| for scalars)."""
    if noise <= 0:
        return
    for p in module.parameters():
        scale = p.std() if p.numel() > 1 else p.abs()
        if generator is None:
            eps = torch.randn_like(p)
        else:
            eps = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        p.add_(eps * noise * scale)


class GeneratorPair(nn.Module):
    """Holds G_a, G_b (G_b a perturbed copy of G_a at the start) and their EMA copies for sampling.

    D is not part of the pair: one discriminator judges every generator's samples for realism (the cGAN
    trainer's, ``producers/cgan.py``).
    """

    def __init__(self, gen_cfg: CGanConfig, hpg_cfg: HPGConfig, generator: Generator) -> None:
        super().__init__()
        self.gen_cfg, self.hpg_cfg = gen_cfg, hpg_cfg
        self.generator_a = generator
        self.generator_b = copy.deepcopy(generator)
        _perturb(self.generator_b, hpg_cfg.init_noise)
        self.ema_a = ema_copy(self.generator_a, gen_cfg.ema_decay)
        self.ema_b = ema_copy(self.generator_b, gen_cfg.ema_decay)

    @torch.no_grad()
    def restart_from(self, state: dict[str, torch.Tensor], seed: int) -> None:
        """Start over from the weights ``state`` (e.g. a pre-trained G): G_a = state, G_b = state
        perturbed by ``hpg.init_noise`` (noise from ``seed``, so every process draws the same), EMAs reset.
        Loads in place, so modules already wrapped for distributed training stay valid."""
        self.generator_a.load_state_dict(state)
        self.generator_b.load_state_dict(state)
        _perturb(self.generator_b, self.hpg_cfg.init_noise, torch.Generator().manual_seed(seed))
        for ema, gen in ((self.ema_a, self.generator_a), (self.ema_b, self.generator_b)):
            ema.module.load_state_dict(gen.state_dict())
            ema.reset()

    def optimizer(self, generator_a: nn.Module | None = None, generator_b: nn.Module | None = None):
        params = list((generator_a or self.generator_a).parameters()) + list(
            (generator_b or self.generator_b).parameters()
        )
        return torch.optim.Adam(params, lr=self.gen_cfg.lr_g, betas=self.gen_cfg.betas, fused=True)

    @torch.no_grad()
    def update_ema(self) -> None:
        self.ema_a.update_parameters(self.generator_a)
        self.ema_b.update_parameters(self.generator_b)

    def similarity_terms(
        self, encoder: nn.Module, x_a: torch.Tensor, x_b: torch.Tensor, target: float | torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The pair term of samples (``x_a``, ``x_b``) under the fixed ``encoder`` towards ``target``, and its
        records (0-d tensors on the device, and the target)."""
        s = backbone_similarity(encoder, x_a, x_b)
        loss = pair_loss(s, target, self.hpg_cfg.lambda_pair, self.hpg_cfg.mu)
        return loss, {"pair_similarity": s.detach().mean(), "pair_target": target, "loss_pair": loss.detach()}


@torch.no_grad()
def real_positive_similarity(encoder: nn.Module, views: Any, x_real: torch.Tensor) -> torch.Tensor:
    """The encoder's mean backbone similarity of two augmented views of each real image: what the adaptive
    target (:class:`AdaptiveTarget`) measures."""
    v1, v2 = views.two_views(x_real)
    return backbone_similarity(encoder, v1, v2).mean()


def backbone_similarity(encoder: nn.Module, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """cos(h(x_a), h(x_b)) per pair with the encoder fixed: gradients reach the images, not the encoder.

    Runs the bare encoder (not a DDP wrapper) in eval mode, so batch-norm uses its running statistics and
    does not update them, and with its parameters frozen for this forward pass.
    """
    was_training = encoder.training
    encoder.eval()
    encoder.requires_grad_(False)
    try:
        h = encoder.features(torch.cat([x_a, x_b]))
    finally:
        encoder.requires_grad_(True)
        encoder.train(was_training)
    with float32(h):  # the similarity in float32 whatever the autocast
        h_a, h_b = h.float().chunk(2)
        return F.cosine_similarity(h_a, h_b, dim=1)
