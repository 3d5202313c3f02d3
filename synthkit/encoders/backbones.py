"""Backbones h: image -> feature vector.

Every backbone is ``trunk(stem(x))`` with ``stem`` its first convolution. ``forward`` also takes a list of
batches: the stem runs on each and the trunk on their concatenation, which is the same function of the
concatenated batch (convolution is per sample; batch-norm statistics are taken after the stem, over all
of it). HSG uses this so that autograd computes input gradients for the synthetic views only, not for
the real views sharing the batch; on a 1-channel 28 px batch that saves ~20% of a joint step on a CPU.

``convnet``: a 4-block conv net (widths w, 2w, 4w, 8w; strides 1-2-2-2; BN+ReLU; global average pooling),
the CPU default. ``resnet18``/``resnet50``: torchvision ResNets with the small-image stem used for
CIFAR-sized inputs in SimCLR's CIFAR experiments (3x3 stride-1 first conv, no max-pool).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchvision
from torch import nn

from synthkit.registry import BACKBONES


class _StemTrunk(nn.Module):
    stem: nn.Module
    trunk: nn.Module

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return self.trunk(self.stem(x))
        return self.trunk(torch.cat([self.stem(chunk) for chunk in x]))


class ConvNet(_StemTrunk):
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
        self.stem = layers[0]
        self.trunk = nn.Sequential(*layers[1:], nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = prev


class SmallStemResNet(_StemTrunk):
    """A torchvision ResNet with a 3x3 stride-1 first convolution and no max-pool, for 32 px images."""

    def __init__(self, factory: Callable[..., nn.Module], in_channels: int) -> None:
        super().__init__()
        net = factory(weights=None)
        self.stem = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.trunk = nn.Sequential(
            net.bn1, net.relu, net.layer1, net.layer2, net.layer3, net.layer4, net.avgpool, nn.Flatten()
        )
        self.out_dim = net.fc.in_features


# The builders the BACKBONES registry (synthkit.registry) names: (in_channels, width) -> module.


def convnet(in_channels: int, width: int) -> nn.Module:
    return ConvNet(in_channels, width)


def resnet18(in_channels: int, width: int) -> nn.Module:
    return SmallStemResNet(torchvision.models.resnet18, in_channels)


def resnet50(in_channels: int, width: int) -> nn.Module:
    return SmallStemResNet(torchvision.models.resnet50, in_channels)


def build_backbone(name: str, in_channels: int, width: int) -> nn.Module:
    """Build a backbone from the registry (``encoder.backbone``); the module exposes ``out_dim``."""
    return BACKBONES.get(name)(in_channels, width)
