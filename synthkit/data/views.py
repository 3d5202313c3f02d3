"""Differentiable, per-sample random views (SimCLR recipe, Chen et al. 2020) built on kornia.

torchvision's v2 transforms draw one set of parameters per batch call, which would give every image in a batch
the same crop; kornia draws them per sample and keeps the ops differentiable, which hard-sample generation
needs: the generator's gradient flows back through the views (docs/method.md, "HSG with a conditional GAN",
step 3).
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

from synthkit.config import ViewsConfig


class Views(nn.Module):
    """Maps a float batch in [0, 1] (N x C x H x W) to one random view per image, differentiably.

    Colour jitter is limited to brightness and contrast for grayscale images; saturation, hue and random
    grayscale are added for RGB.
    """

    def __init__(self, cfg: ViewsConfig, channels: int, size: int) -> None:
        super().__init__()
        self.channels = channels
        self.size = size
        ops: list[nn.Module] = [
            K.RandomResizedCrop((size, size), scale=cfg.crop_scale),
            K.RandomHorizontalFlip(p=cfg.flip_p),
        ]
        if channels == 3:
            ops.append(K.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, p=cfg.jitter_p))
            ops.append(K.RandomGrayscale(p=cfg.grayscale_p))
        else:
            ops.append(K.ColorJitter(cfg.brightness, cfg.contrast, 0.0, 0.0, p=cfg.jitter_p))
        self.ops = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels or x.shape[-1] != self.size or x.shape[-2] != self.size:
            raise ValueError(
                f"views expect N x {self.channels} x {self.size} x {self.size} images, got {tuple(x.shape)}"
            )
        return self.ops(x).clamp(0.0, 1.0)

    def two_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent views of every image (one call on the doubled batch, then split)."""
        v = self.forward(torch.cat([x, x], dim=0))
        return v[: len(x)], v[len(x) :]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
