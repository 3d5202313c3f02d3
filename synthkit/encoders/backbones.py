"""Backbones h: image -> feature vector.

``convnet``: a 4-block conv net (widths w, 2w, 4w, 8w; strides 1-2-2-2; BN+ReLU; global average pooling),
the CPU default. ``resnet18``/``resnet50``: torchvision ResNets with the small-image stem used for
CIFAR-sized inputs in SimCLR's CIFAR experiments (3x3 stride-1 first conv, no max-pool).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn


class ConvNet(nn.Module):
    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        chans = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(chans):
            layers += [
                nn.Conv2d(prev, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            prev = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _small_stem_resnet(factory: Callable[..., nn.Module], in_channels: int) -> nn.Module:
    net = factory(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    out_dim = net.fc.in_features
    net.fc = nn.Identity()
    net.out_dim = out_dim
    return net


BACKBONES: dict[str, Callable[[int, int], nn.Module]] = {
    "convnet": lambda c, w: ConvNet(c, w),
    "resnet18": lambda c, w: _small_stem_resnet(torchvision.models.resnet18, c),
    "resnet50": lambda c, w: _small_stem_resnet(torchvision.models.resnet50, c),
}


def build_backbone(name: str, in_channels: int, width: int) -> nn.Module:
    """Build a backbone from the registry; the module exposes ``out_dim``."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    return BACKBONES[name](in_channels, width)
