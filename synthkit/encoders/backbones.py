"""Backbones h: image -> feature vector.

Every backbone is ``trunk(stem(x))`` with ``stem`` its first convolution. ``forward`` also takes a list of
batches: the stem runs on each and the trunk on their concatenation, which is the same function of the
concatenated batch (convolution is per sample; batch-norm statistics are taken after the stem, over all
of it). HSG uses this so that autograd computes input gradients for the synthetic views only, not for
the real views sharing the batch; on a 1-channel 28 px batch that saves ~20% of a joint step on a CPU.

``convnet``: a 4-block conv net (widths w, 2w, 4w, 8w; strides 1-2-2-2; BN+ReLU; global average pooling),
the CPU default. ``resnet18``/``resnet50``: torchvision ResNets with one of two stems (``encoder.stem``):

* ``small``: a 3x3 stride-1 first convolution and no max-pool, the stem SimCLR's CIFAR experiments use;
* ``standard``: torchvision's ImageNet stem, a 7x7 stride-2 convolution and a 3x3 stride-2 max-pool.

``auto`` (the default) picks ``small`` up to :data:`SMALL_STEM_MAX_SIZE` (64 px) and ``standard`` above.
Why 64: the standard stem divides the side by 4 before the first stage, so the last stage sees side/32: 1x1
at 32 px and 2x2 at 64 px, too little left to learn from; the small stem keeps side/8 there (4x4 at 32 px).
The small stem's cost grows with the side squared at full resolution: at 64 px its first stage runs at
64x64, as the standard stem's does at 256 px (ImageNet's cost), and at 224 px it costs 16x the standard
stem's FLOPs. So above 64 px (STL-10's 96, ImageNet's 224) the standard stem is the one that fits.

Global average pooling is a mean over the spatial dimensions rather than ``nn.AdaptiveAvgPool2d``: the same
numbers, and a backward pass that is deterministic on CUDA (torch has no deterministic CUDA backward for the
adaptive pool, so ``train.deterministic`` would refuse it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchvision
from torch import nn

from synthkit.errors import ModelError
from synthkit.registry import BACKBONES

# the largest image side that ``encoder.stem: auto`` gives a ResNet the small stem (the module docstring)
SMALL_STEM_MAX_SIZE = 64
STEMS = ("auto", "small", "standard")
RESNETS = ("resnet18", "resnet50")


class GlobalAvgPool(nn.Module):
    """N x C x H x W -> N x C x 1 x 1, the mean over H and W (deterministic backward on every device)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


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
        self.trunk = nn.Sequential(*layers[1:], GlobalAvgPool(), nn.Flatten())
        self.out_dim = prev


class ResNet(_StemTrunk):
    """A torchvision ResNet with the ``small`` or the ``standard`` stem (the module docstring).

    The trunk's layout (and so its state dict) is the same with either stem: the standard stem's max-pool
    sits with the ReLU after the first batch norm.
    """

    def __init__(self, factory: Callable[..., nn.Module], in_channels: int, stem: str = "small") -> None:
        super().__init__()
        if stem not in ("small", "standard"):
            raise ModelError(f"encoder.stem must be small or standard for a ResNet, got {stem!r}")
        net = factory(weights=None)
        self.stem_kind = stem
        if stem == "small":
            self.stem = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            act: nn.Module = net.relu
        else:
            self.stem = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            act = nn.Sequential(net.relu, net.maxpool)
        self.trunk = nn.Sequential(
            net.bn1, act, net.layer1, net.layer2, net.layer3, net.layer4, GlobalAvgPool(), nn.Flatten()
        )
        self.out_dim = net.fc.in_features


SmallStemResNet = ResNet  # the name before the standard stem existed


def resolve_stem(backbone: str, stem: str, small_stem: bool, image_size: int | None) -> str | None:
    """The stem a backbone gets: ``small`` or ``standard`` for a ResNet (synthkit's or timm's), None for a
    backbone without that choice (``convnet``, a plugin, a timm architecture left as it is).

    ``stem``: ``encoder.stem``; ``auto`` gives synthkit's ResNets the small stem up to
    :data:`SMALL_STEM_MAX_SIZE` px and the standard stem above it (an unknown ``image_size``: small, as
    before the choice existed), and leaves a timm architecture its own stem (``standard``) unless
    ``small_stem`` (``encoder.small_stem``, the older spelling of ``stem: small`` for timm) asks otherwise.
    """
    if stem not in STEMS:
        raise ModelError(f"encoder.stem must be one of {', '.join(STEMS)}, got {stem!r}")
    if backbone.startswith("timm/"):
        if small_stem or stem == "small":
            return "small"
        return "standard"
    if backbone not in RESNETS:
        return None
    if stem != "auto":
        return stem
    return "small" if image_size is None or image_size <= SMALL_STEM_MAX_SIZE else "standard"


# The builders the BACKBONES registry (synthkit.registry) names: (in_channels, width[, stem]) -> module.


def convnet(in_channels: int, width: int) -> nn.Module:
    return ConvNet(in_channels, width)


def resnet18(in_channels: int, width: int, stem: str = "small") -> nn.Module:
    return ResNet(torchvision.models.resnet18, in_channels, stem)


def resnet50(in_channels: int, width: int, stem: str = "small") -> nn.Module:
    return ResNet(torchvision.models.resnet50, in_channels, stem)


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
                    f"encoder.stem=small: timm/{name} has no ResNet-style conv1/maxpool stem to replace"
                )
            model.conv1 = nn.Conv2d(in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        self.model = model
        self.out_dim = int(model.num_features)

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        return self.model(x if isinstance(x, torch.Tensor) else torch.cat(list(x)))


def build_backbone(
    name: str,
    in_channels: int,
    width: int,
    *,
    stem: str | None = None,
    small_stem: bool = False,
    has_weights: bool = False,
) -> nn.Module:
    """A backbone (``encoder.backbone``: a registered name, or ``timm/NAME``); it exposes ``out_dim``.

    ``stem``: ``small`` or ``standard`` for a ResNet (``resolve_stem``; None: a ResNet's small stem, a timm
    architecture's own unless ``small_stem``)."""
    if name.startswith("timm/"):
        small = small_stem or stem == "small"
        return TimmBackbone(name[5:], in_channels, small_stem=small, has_weights=has_weights)
    builder = BACKBONES.get(name)
    if stem is None or name not in RESNETS:
        return builder(in_channels, width)
    return builder(in_channels, width, stem)
