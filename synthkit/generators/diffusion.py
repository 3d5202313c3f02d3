"""A (pseudo-)class-conditional diffusers ``UNet2DModel`` trained with ``DDPMScheduler``.

Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (epsilon prediction, the simple
MSE objective); class conditioning through diffusers' learned class embedding (``num_class_embeds``), added
to the timestep embedding. The model and its noise schedule are saved in diffusers' own layout
(``unet/`` and ``scheduler/`` with their ``config.json``), so ``UNet2DModel.from_pretrained(dir / "unet")``
loads it without synthkit.

Example::

    unet = build_unet(DiffusionConfig(), channels=1, size=28, num_classes=10)
    scheduler = build_scheduler(DiffusionConfig())
    loss = diffusion_loss(unet, scheduler, x_in_minus1_1, labels, generator=g)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from synthkit.config import DiffusionConfig

UNET_DIR = "unet"
SCHEDULER_DIR = "scheduler"


def build_unet(cfg: DiffusionConfig, channels: int, size: int, num_classes: int) -> UNet2DModel:
    """One resolution level per entry of ``cfg.block_out_channels`` (the last level without downsampling).

    ``num_classes = 0`` builds an unconditional model (no class embedding).
    """
    levels = len(cfg.block_out_channels)
    if size % (2 ** (levels - 1)):
        raise ValueError(
            f"a {levels}-level UNet halves {size} px {levels - 1} times; choose a size divisible by "
            f"{2 ** (levels - 1)} or fewer levels (diffusion.block_out_channels)"
        )
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if cfg.attention:  # self-attention at the coarsest level (and the mid block) only: cheap at 7-8 px
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=cfg.norm_num_groups,
        add_attention=cfg.attention,  # diffusers' default puts attention in the mid block regardless
        num_class_embeds=num_classes or None,
    )


def build_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """The training noise schedule; ``clip_sample`` keeps predicted x0 in the data range [-1, 1]."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
    )


def ddim_scheduler(scheduler_config: dict, steps: int) -> DDIMScheduler:
    """A DDIM scheduler over the same betas, with ``steps`` evenly spaced ("leading") timesteps.

    "leading" spacing (T - T/steps, ..., 0) rather than "trailing" (T - 1, ...): the cosine schedule's last
    timesteps have a signal-to-noise ratio near 0, where an epsilon-predicting model's estimate of x0 is
    noise amplified ~1000x; starting DDIM there locks a clipped random pattern into the sample (measured:
    class-conditional toy samples ignored their class). The final step lands on alpha = 1.
    """
    ddim = DDIMScheduler.from_config(scheduler_config, timestep_spacing="leading", set_alpha_to_one=True)
    ddim.set_timesteps(steps)
    return ddim


def to_model_range(x01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> the model's range [-1, 1]."""
    return x01 * 2.0 - 1.0


def to_image_range(x: torch.Tensor) -> torch.Tensor:
    """The model's range [-1, 1] -> images in [0, 1] (clamped)."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


def diffusion_loss(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The simple DDPM objective: MSE between the true noise and the UNet's prediction at a random t.

    Args:
        unet: the (possibly DDP-wrapped) UNet2DModel.
        scheduler: the training DDPMScheduler (its ``alphas_cumprod``).
        x0: N x C x H x W clean images in [-1, 1].
        labels: N condition ids, or None for an unconditional model.
        generator: the source of t and the noise (on x0's device).
    """
    n = x0.shape[0]
    t = torch.randint(
        0, scheduler.config.num_train_timesteps, (n,), device=x0.device, generator=generator
    ).long()
    noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
    noisy = scheduler.add_noise(x0, noise, t)
    pred = unet(noisy, t, class_labels=labels).sample
    return F.mse_loss(pred.float(), noise.float())


def save_diffusion(unet: UNet2DModel, scheduler: DDPMScheduler, directory: str | Path) -> None:
    """diffusers' layout: ``directory/unet`` (config.json + safetensors) and ``directory/scheduler``."""
    directory = Path(directory)
    unet.save_pretrained(directory / UNET_DIR, safe_serialization=True)
    scheduler.save_pretrained(directory / SCHEDULER_DIR)


def load_diffusion(directory: str | Path) -> tuple[UNet2DModel, DDPMScheduler]:
    """Load what :func:`save_diffusion` wrote, with plain diffusers; the UNet is in eval mode."""
    directory = Path(directory)
    if not (directory / UNET_DIR / "config.json").is_file():
        raise FileNotFoundError(f"{directory} holds no diffusers UNet ({directory / UNET_DIR} is missing)")
    # safetensors only: a pickled diffusion_pytorch_model.bin next to it is never loaded
    unet = UNet2DModel.from_pretrained(directory / UNET_DIR, use_safetensors=True)
    scheduler = DDPMScheduler.from_pretrained(directory / SCHEDULER_DIR)
    unet.eval()
    return unet, scheduler
