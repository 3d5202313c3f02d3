"""Stage 1 of a diffusion run: train the conditional UNet on the real images, under Accelerate.

The DDPM objective (``synthkit.generators.diffusion.diffusion_loss``) on real images in [-1, 1] with their
condition ids; AdamW; diffusers' ``EMAModel`` (decay warm-up min(decay, (1 + n) / (10 + n)), as the GAN's
EMA) gives the weights that sample. Each process trains on its own share of every batch (``EpochBatches``
splits by rank), DDP keeps the weights in sync.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from synthkit.config import DiffusionConfig
from synthkit.data.views import to_float
from synthkit.generators.diffusion import build_scheduler, build_unet, diffusion_loss, to_model_range
from synthkit.training.batches import MemoryBatches


def train_unet(
    cfg: DiffusionConfig,
    accelerator: Accelerator,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    num_classes: int,
    *,
    seed: int,
    log: Callable[[dict, int], None] | None = None,
    log_every: int = 50,
    progress: bool = True,
) -> tuple[UNet2DModel, DDPMScheduler, float]:
    """Train for ``cfg.train_steps``; return the EMA UNet (eval mode, on CPU), the scheduler, the last loss.

    Args:
        images: N x C x H x W uint8 real images.
        labels: N condition ids (or None: unconditional, ``num_classes`` 0).
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size % world:
        raise ValueError(f"diffusion.batch_size={cfg.batch_size} is not divisible by {world} processes")
    b = cfg.batch_size // world
    batches = MemoryBatches(images, b, rank, world, seed=seed + 17)
    if len(batches) == 0:
        raise ValueError(f"the real data hold fewer images than one diffusion batch of {cfg.batch_size}")
    channels, size = images.shape[1], images.shape[-1]
    torch.manual_seed(seed)  # identical initial weights on every process
    unet = build_unet(cfg, channels, size, num_classes)
    scheduler = build_scheduler(cfg)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, model_cls=UNet2DModel, model_config=unet.config)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    unet_ddp, opt = accelerator.prepare(unet, opt)
    ema.to(accelerator.device)
    g = torch.Generator(device=accelerator.device).manual_seed(seed * 1009 + 7919 * (rank + 1))
    step, epoch, last = 0, 0, float("nan")
    bar = tqdm(
        total=cfg.train_steps, desc="diffusion", disable=not (progress and accelerator.is_main_process)
    )
    unet_ddp.train()
    while step < cfg.train_steps:
        for idx, x in batches.epoch(epoch):
            c = labels[idx].to(accelerator.device) if num_classes else None
            x0 = to_model_range(to_float(x).to(accelerator.device))
            with accelerator.autocast():
                loss = diffusion_loss(unet_ddp, scheduler, x0, c, generator=g)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(unet_ddp.parameters(), 1.0)
            opt.step()
            ema.step(accelerator.unwrap_model(unet_ddp).parameters())
            step += 1
            last = float(loss.detach())
            bar.update(1)
            if log is not None and step % log_every == 0:
                log({"diffusion_step": step, "loss_diffusion": last}, step)
            if step >= cfg.train_steps:
                break
        epoch += 1
    bar.close()
    sampler = build_unet(cfg, channels, size, num_classes)
    ema.copy_to(sampler.parameters())
    sampler.eval()
    return sampler, scheduler, last
