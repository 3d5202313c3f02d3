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

from synthkit.errors import ModelError
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


class TimmBackbone(nn.Module):
    """A timm architecture as a backbone (``encoder.backbone: timm/NAME``), built without weights.

    timm is an optional extra (``pip install 'synthkit[timm]'``). Nothing is downloaded: pretrained weights
    come only from a local file (``encoder.weights``), so a name that selects hub weights (``NAME.TAG``,
    ``hf-hub:...``) without such a file is refused. ``small_stem``: replace a ResNet-family stem (a 7x7
    stride-2 ``conv1`` and a max-pool) by a 3x3 stride-1 convolution without max-pool, the CIFAR-style stem of
    synthkit's own ResNets: at 32 px the stock stem leaves 1x1 maps before the last stage.
    """

    def __init__(
        self, name: str, in_channels: int, *, small_stem: bool = False, has_weights: bool = False
    ) -> None:
        super().__init__()
        try:
            import timm
        except ImportError:
            raise ModelError(
                f"encoder.backbone=timm/{name} needs timm: pip install 'synthkit[timm]'"
            ) from None
        if name.startswith(("hf-hub:", "hf_hub:")) or "/" in name:
            raise ModelError(
                f"encoder.backbone=timm/{name} names a model on the Hugging Face hub; synthkit never "
                "downloads: name a timm architecture, with its weights as a local file (encoder.weights)"
            )
        if "." in name and not has_weights:
            arch, tag = name.split(".", 1)
            raise ModelError(
                f"encoder.backbone=timm/{name} selects pretrained weights ({tag}) that synthkit will not "
                f"download: pass encoder.weights=FILE.safetensors, or use timm/{arch} (random weights)"
            )
        try:
            model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
        except RuntimeError as e:
            raise ModelError(f"encoder.backbone=timm/{name}: {e}") from e
        if small_stem:
            conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
            if not isinstance(conv, nn.Conv2d) or pool is None:
                raise ModelError(
                    f"encoder.small_stem: timm/{name} has no ResNet-style conv1/maxpool stem to replace"
                )
            model.conv1 = nn.Conv2d(in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        self.model = model
        self.out_dim = int(model.num_features)

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        return self.model(x if isinstance(x, torch.Tensor) else torch.cat(list(x)))


def build_backbone(
    name: str, in_channels: int, width: int, *, small_stem: bool = False, has_weights: bool = False
) -> nn.Module:
    """A backbone (``encoder.backbone``: a registered name, or ``timm/NAME``); it exposes ``out_dim``."""
    if name.startswith("timm/"):
        return TimmBackbone(name[5:], in_channels, small_stem=small_stem, has_weights=has_weights)
    return BACKBONES.get(name)(in_channels, width)
