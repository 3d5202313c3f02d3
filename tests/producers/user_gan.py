"""A user's own GAN generator, as a third party would write it: importable by path, nothing of synthkit."""

from __future__ import annotations

import torch
from torch import nn


class TinyGenerator(nn.Module):
    """(z, c) -> N x channels x size x size images in [0, 1]."""

    def __init__(self, z_dim: int, channels: int, size: int, num_classes: int) -> None:
        super().__init__()
        self.start = size // 4
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        self.fc = nn.Linear(z_dim, 16 * self.start * self.start)
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(8, channels, 3, padding=1),
        )  # fmt: skip

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = z + self.embed(c)
        h = self.fc(z).view(len(z), 16, self.start, self.start)
        return torch.sigmoid(self.body(h))


def build(*, z_dim: int, channels: int, size: int, num_classes: int) -> nn.Module:
    return TinyGenerator(z_dim, channels, size, num_classes)


def build_wrong_range(*, z_dim: int, channels: int, size: int, num_classes: int) -> nn.Module:
    class Minus(TinyGenerator):
        def forward(self, z, c=None):  # noqa: ANN001, ANN202
            return super().forward(z, c) * 2 - 1  # [-1, 1]: not the data's range

    return Minus(z_dim, channels, size, num_classes)


class TinyDiscriminator(nn.Module):
    def __init__(self, channels: int, size: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 8, 3, stride=2, padding=1), nn.LeakyReLU(0.1), nn.Flatten()
        )
        self.out = nn.Linear(8 * ((size + 1) // 2) ** 2, 1)
        self.embed = nn.Embedding(num_classes, 1) if num_classes else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        logit = self.out(self.body(x * 2 - 1)).squeeze(1)
        return logit if self.embed is None else logit + self.embed(c).squeeze(1)


def build_discriminator(*, channels: int, size: int, num_classes: int) -> nn.Module:
    return TinyDiscriminator(channels, size, num_classes)
