"""The paper's two producers on a diffusion model: encoder-guided hard samples and branched positive pairs.

Wu, Wang, Zeng, Shi, Hu, "Synthetic Data Can Also Teach", AAAI 2023, realised with DDIM sampling (Song,
Meng, Ermon, ICLR 2021) of a conditional UNet (docs/method.md, "The same two producers with diffusion"):

- HSG by guidance: at each DDIM step the UNet's prediction of the clean image x0 is moved along the
  gradient of the current encoder's per-sample NT-Xent loss on differentiable views of it (ascent: harder),
  and the step continues from the moved x0, in the manner of classifier guidance (Dhariwal & Nichol,
  NeurIPS 2021) applied in x0 space (as in universal guidance, Bansal et al., 2023), which needs no
  backward pass through the UNet. The gradient is normalised to unit RMS per sample, so ``scale`` is a
  step length in pixels of the [-1, 1] range.
- HPG by branching: the two samples of a pair share their initial noise and all DDIM steps above the
  noise level ``t_split`` (a fraction of the training timesteps), then continue with independent fresh
  noise (``branch_mode="noise"``, DDIM with ``branch_eta`` > 0); or x_a is finished, re-noised to
  ``t_split`` with fresh noise and denoised again (``"sdedit"``, Meng et al., ICLR 2022). A larger
  ``t_split`` gives less similar pairs; ``t_split = 0`` gives identical ones.

diffusers' stock pipelines take no class labels, so the loop over ``DDIMScheduler.step`` is our own. All
randomness comes from the ``torch.Generator`` passed in (the views' augmentations from a seed derived from
it without consuming it), so a seed gives the same samples, and guidance with scale 0 takes exactly the
unguided code path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers import DDIMScheduler

from synthkit.determinism import seeded
from synthkit.generators.diffusion import ddim_scheduler, to_image_range
from synthkit.producer_configs.diffusion import DiffusionConfig

if TYPE_CHECKING:
    from synthkit.objectives.scoring import Scorer


@dataclass
class Guidance:
    """What encoder guidance needs: the run's scorer (encoder in eval mode, its views and objective, a real
    reference batch; ``objectives/scoring.py``), the scale and its schedule over the noise levels."""

    scorer: Scorer
    scale: float
    schedule: str = "constant"
    #: what the scorer sees of a predicted x0 in [0, 1] (e.g. a resize to the encoder's size); differentiable
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None

    def weight(self, t: int, num_train_timesteps: int) -> float:
        """eta_hard(t): ``constant``, or ``linear`` (0 at pure noise, ``scale`` at t = 0)."""
        if self.schedule == "linear":
            return self.scale * (1.0 - t / num_train_timesteps)
        return self.scale


def guidance_scale_at(cfg: DiffusionConfig, lambda_hard: float) -> float:
    """eta_hard, the one number for the strength of encoder guidance: ``generator.guidance_scale`` x
    lambda_hard, HSG's weight at that time (``hsg_lambda``: 0 during ``hsg.warmup_epochs``, then ramping
    to ``hsg.lambda_hard`` over ``hsg.ramp_epochs``; exports use ``hsg.lambda_hard``). Samples, pools and
    manifests record it as ``guidance_scale`` (docs/method.md, "HSG by guided sampling")."""
    return cfg.guidance_scale * lambda_hard


def t_split_at(cfg: DiffusionConfig, progress: float) -> float:
    """t_split over training (progress in [0, 1]): linear from ``t_split_start`` to ``t_split_end``."""
    p = min(max(progress, 0.0), 1.0)
    return cfg.t_split_start + (cfg.t_split_end - cfg.t_split_start) * p


def _guided_eps(
    eps: torch.Tensor, x: torch.Tensor, t: int, ddim: DDIMScheduler, guidance: Guidance, w: float, seed: int
) -> torch.Tensor:
    """Move the predicted x0 up the encoder's loss by ``w`` (unit-RMS gradient), return the matching eps."""
    a = ddim.alphas_cumprod[t].to(x.device, x.dtype)
    x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1.0, 1.0).detach().requires_grad_(True)
    with torch.enable_grad(), seeded(seed):  # the views' randomness, the caller's RNG state restored after
        x01 = to_image_range(x0)
        h = guidance.scorer.hardness_grad(guidance.prepare(x01) if guidance.prepare is not None else x01)
        (grad,) = torch.autograd.grad(h.sum(), x0)
    rms = grad.flatten(1).square().mean(dim=1).sqrt().clamp_min(1e-12)
    x0 = (x0.detach() + w * grad / rms.view(-1, 1, 1, 1)).clamp(-1.0, 1.0)
    return (x - a.sqrt() * x0) / (1 - a).sqrt()


def _denoise(
    unet: torch.nn.Module,
    ddim: DDIMScheduler,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    timesteps: list[int],
    eta: float,
    generator: torch.Generator,
    guidance: Guidance | None,
) -> torch.Tensor:
    """DDIM steps over ``timesteps`` from x (in model range); fresh noise is drawn only when eta > 0."""
    T = ddim.config.num_train_timesteps
    base_seed = generator.initial_seed()
    for t in timesteps:
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        with torch.no_grad():
            eps = unet(x, tt, class_labels=labels).sample
        w = guidance.weight(t, T) if guidance is not None else 0.0
        if w > 0:
            eps = _guided_eps(eps, x, t, ddim, guidance, w, seed=(base_seed * 1009 + t) % (2**63))
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if eta > 0 else None
        with torch.no_grad():
            x = ddim.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    return x


def _labels(labels: torch.Tensor | None, n: int | None) -> int:
    if labels is None and n is None:
        raise ValueError("give condition labels or, for an unconditional model, n")
    return len(labels) if labels is not None else int(n)


def ddim_sample(
    unet: torch.nn.Module,
    scheduler_config: dict,
    labels: torch.Tensor | None,
    *,
    generator: torch.Generator,
    steps: int = 20,
    eta: float = 0.0,
    n: int | None = None,
    guidance: Guidance | None = None,
) -> torch.Tensor:
    """Class-conditional DDIM samples in [0, 1], N x C x H x W; ``labels`` None for an unconditional model.

    Args:
        unet: a diffusers UNet2DModel (eval mode).
        scheduler_config: the training scheduler's config (``scheduler.config``): the betas to invert.
        labels: N condition ids (on the UNet's device), or None.
        generator: the source of the initial noise and of DDIM's fresh noise (eta > 0).
        steps: number of DDIM steps; eta: DDIM's stochasticity (0: deterministic).
        guidance: encoder guidance (HSG); None or scale 0: plain sampling.
    """
    m = _labels(labels, n)
    c, s = unet.config.in_channels, unet.config.sample_size
    device = next(unet.parameters()).device
    ddim = ddim_scheduler(scheduler_config, steps)
    x = torch.randn((m, c, s, s), generator=generator, device=device)
    x = _denoise(unet, ddim, x, labels, [int(t) for t in ddim.timesteps], eta, generator, guidance)
    return to_image_range(x)


def ddim_pairs(
    unet: torch.nn.Module,
    scheduler_config: dict,
    labels: torch.Tensor | None,
    *,
    t_split: float,
    generator: torch.Generator,
    steps: int = 20,
    eta: float = 0.0,
    mode: str = "noise",
    branch_eta: float = 1.0,
    n: int | None = None,
    guidance: Guidance | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive pairs (x_a, x_b) in [0, 1] that share noise and trajectory above ``t_split``.

    ``t_split`` is a fraction of the training timesteps: the DDIM steps at timesteps below
    ``t_split * T`` are branched. ``mode="noise"``: both branches continue from the shared x_t with
    ``branch_eta`` and their own fresh noise. ``mode="sdedit"``: x_a is sampled to the end, then x_b is x_a
    re-noised (fresh noise) to the first branched timestep and denoised again. ``t_split = 0``: x_b = x_a.
    """
    if not 0.0 <= t_split <= 1.0:
        raise ValueError(f"t_split must be in [0, 1], got {t_split}")
    if mode not in ("noise", "sdedit"):
        raise ValueError(f"branch mode must be 'noise' or 'sdedit', got {mode!r}")
    m = _labels(labels, n)
    c, s = unet.config.in_channels, unet.config.sample_size
    device = next(unet.parameters()).device
    ddim = ddim_scheduler(scheduler_config, steps)
    timesteps = [int(t) for t in ddim.timesteps]
    cut = t_split * ddim.config.num_train_timesteps
    shared = [t for t in timesteps if t >= cut]
    branched = [t for t in timesteps if t < cut]
    x = torch.randn((m, c, s, s), generator=generator, device=device)
    if mode == "noise":
        x = _denoise(unet, ddim, x, labels, shared, eta, generator, guidance)
        if not branched:
            return to_image_range(x), to_image_range(x.clone())
        both = torch.cat([x, x])
        both_labels = None if labels is None else torch.cat([labels, labels])
        both = _denoise(unet, ddim, both, both_labels, branched, branch_eta, generator, guidance)
        return to_image_range(both[:m]), to_image_range(both[m:])
    x_a = _denoise(unet, ddim, x, labels, timesteps, eta, generator, guidance)
    if not branched:
        return to_image_range(x_a), to_image_range(x_a.clone())
    fresh = torch.randn(x_a.shape, generator=generator, device=device)
    t0 = torch.full((m,), branched[0], dtype=torch.long, device=device)
    x_b = ddim.add_noise(x_a, fresh, t0)
    x_b = _denoise(unet, ddim, x_b, labels, branched, eta, generator, guidance)
    return to_image_range(x_a), to_image_range(x_b)
