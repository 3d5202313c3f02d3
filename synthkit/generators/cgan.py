"""Conditional GAN for small images.

Generator: conditional batch norm (de Vries et al., 2017; Miyato & Koyama, 2018) in DCGAN-style
up-sampling blocks. Discriminator: spectral normalisation (Miyato et al., ICLR 2018) with a projection
head for the condition (Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018).
``num_classes = 0`` makes both unconditional. Images are in [0, 1] at the interface.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import spectral_norm

from synthkit.errors import ModelError
from synthkit.producer_configs.cgan import CGanConfig
from synthkit.registry import resolve
from synthkit.weights import load_into, load_state_dict


def num_upsamplings(size: int) -> int:
    """Most doublings (<= 3) such that the start resolution is an integer >= 4."""
    for n in (3, 2, 1):
        if size % (2**n) == 0 and size // (2**n) >= 4:
            return n
    raise ValueError(f"image size {size} cannot be built by doubling from a start resolution >= 4")


class ConditionalBatchNorm2d(nn.Module):
    """BN without affine parameters, followed by a per-condition scale and shift."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(channels, affine=num_classes == 0)
        if num_classes > 0:
            self.gamma = nn.Embedding(num_classes, channels)
            self.beta = nn.Embedding(num_classes, channels)
            nn.init.ones_(self.gamma.weight)
            nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        out = self.bn(x)
        if self.num_classes == 0:
            return out
        return out * self.gamma(c)[:, :, None, None] + self.beta(c)[:, :, None, None]


class _UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_classes: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = ConditionalBatchNorm2d(cout, num_classes)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.up(x)), c))


class Generator(nn.Module):
    """G(z, c) -> image in [0, 1], shape N x channels x size x size.

    ``check_conditions`` (default True): check that the condition ids are in [0, num_classes) and raise a
    ValueError if not. The check reads two values back from the device (a host sync per forward pass); the
    cGAN producer turns it off for its own generators, whose ids are drawn in range by construction
    (``producers/conditions.py``).
    """

    check_conditions: bool = True

    def __init__(self, z_dim: int, channels: int, size: int, num_classes: int, base: int = 64) -> None:
        super().__init__()
        self.z_dim, self.channels, self.size, self.num_classes = z_dim, channels, size, num_classes
        n_up = num_upsamplings(size)
        self.start = size // (2**n_up)
        widths = [base * 2 ** (n_up - i) for i in range(n_up + 1)]  # e.g. 512, 256, 128, 64
        self.fc = nn.Linear(z_dim, widths[0] * self.start * self.start)
        self.bn0 = ConditionalBatchNorm2d(widths[0], num_classes)
        self.blocks = nn.ModuleList(_UpBlock(widths[i], widths[i + 1], num_classes) for i in range(n_up))
        self.out = nn.Conv2d(widths[-1], channels, 3, padding=1)
        self.widths = widths

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes > 0:
            if c is None:
                raise ValueError("this generator is conditional: pass condition ids c")
            if self.check_conditions and (c.min() < 0 or c.max() >= self.num_classes):
                raise ValueError(
                    f"condition ids must be in [0, {self.num_classes}), got {c.min()}..{c.max()}"
                )
        h = self.fc(z).view(len(z), self.widths[0], self.start, self.start)
        h = torch.relu(self.bn0(h, c))
        for block in self.blocks:
            h = block(h, c)
        return torch.sigmoid(self.out(h))


class Discriminator(nn.Module):
    """D(x, c) -> one logit per image; x in [0, 1].

    DCGAN-style: strided 4x4 convolutions halve the resolution from the first layer on, then one 3x3
    convolution; global sum pooling (SNGAN). No full-resolution layer, so D costs a fraction of the
    encoder, which keeps the joint step cheap.
    """

    def __init__(self, channels: int, size: int, num_classes: int, base: int = 64) -> None:
        super().__init__()
        n_down = num_upsamplings(size)
        layers: list[nn.Module] = []
        prev, width = channels, base
        for _ in range(n_down):
            layers += [spectral_norm(nn.Conv2d(prev, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.1)]
            prev, width = width, width * 2
        layers += [spectral_norm(nn.Conv2d(prev, width, 3, padding=1)), nn.LeakyReLU(0.1)]
        self.body = nn.Sequential(*layers)
        self.linear = spectral_norm(nn.Linear(width, 1))
        self.num_classes = num_classes
        if num_classes > 0:
            self.embed = spectral_norm(nn.Embedding(num_classes, width))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes > 0 and c is None:
            raise ValueError("this discriminator is conditional: pass condition ids c")
        h = self.body(x * 2.0 - 1.0).sum(dim=(2, 3))
        out = self.linear(h).squeeze(1)
        if self.num_classes > 0:
            out = out + (self.embed(c) * h).sum(dim=1)
        return out


def build_cgan(
    cfg: CGanConfig, channels: int, size: int, num_classes: int, *, load_weights: bool = True
) -> tuple[nn.Module, nn.Module]:
    """G and D for the cGAN producer (built in this order: the initial weights depend on it)."""
    gen = build_generator(cfg, channels, size, num_classes, load_weights=load_weights)
    return gen, build_discriminator(cfg, channels, size, num_classes, load_weights=load_weights)


def build_generator(
    cfg: CGanConfig, channels: int, size: int, num_classes: int, *, load_weights: bool = True
) -> nn.Module:
    """synthkit's Generator, or the user's (``generator.builder``). ``load_weights``: start the user's G from
    ``generator.weights`` (a run loading its own published G passes False: those weights replace them)."""
    if cfg.builder is None:
        return Generator(cfg.z_dim, channels, size, num_classes, base=cfg.g_channels)
    weights = cfg.weights if load_weights else None
    return user_generator(cfg.builder, weights, cfg.z_dim, channels, size, num_classes)


def build_discriminator(
    cfg: CGanConfig, channels: int, size: int, num_classes: int, *, load_weights: bool = True
) -> nn.Module:
    """The projection discriminator, or the user's (``generator.discriminator_builder``)."""
    if cfg.discriminator_builder is None:
        return Discriminator(channels, size, num_classes, base=cfg.d_channels)
    weights = cfg.discriminator_weights if load_weights else None
    return user_discriminator(cfg.discriminator_builder, weights, channels, size, num_classes)


def user_discriminator(
    builder: str, weights: str | None, channels: int, size: int, num_classes: int
) -> nn.Module:
    """The user's discriminator: ``builder(channels=, size=, num_classes=)`` returning ``D(x, c)`` -> one
    logit per image, ``weights`` loaded when given; checked on a probe."""
    build = resolve(builder)
    try:
        disc = build(channels=channels, size=size, num_classes=num_classes)
    except Exception as e:  # noqa: BLE001 - a user's builder can fail any way; report it in one line
        raise ModelError(f"generator.discriminator_builder={builder} failed: {type(e).__name__}: {e}") from e
    if not isinstance(disc, nn.Module):
        raise ModelError(f"generator.discriminator_builder={builder} returned a {type(disc).__name__}")
    if weights is not None:
        path = Path(weights)
        load_into(disc, load_state_dict(path), f"generator.discriminator_weights={path}")
    with torch.no_grad():
        c = torch.zeros(2, dtype=torch.long) if num_classes else None
        try:
            out = disc(torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0)), c)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"generator.discriminator_builder={builder}: D(x, c) failed: {e}") from e
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2,):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"generator.discriminator_builder={builder}: D(x, c) gives {shape}, needs one logit each"
        )
    return disc


def user_generator(
    builder: str, weights: str | None, z_dim: int, channels: int, size: int, num_classes: int
) -> nn.Module:
    """The user's generator: ``builder(z_dim=, channels=, size=, num_classes=)``, ``weights`` loaded
    (safetensors) when given, and its output checked on a probe: N x channels x size x size, finite, in
    [0, 1]."""
    build = resolve(builder)
    try:
        gen = build(z_dim=z_dim, channels=channels, size=size, num_classes=num_classes)
    except Exception as e:  # noqa: BLE001 - a user's builder can fail any way; report it in one line
        raise ModelError(f"generator.builder={builder} failed: {type(e).__name__}: {e}") from e
    if not isinstance(gen, nn.Module):
        raise ModelError(f"generator.builder={builder} returned a {type(gen).__name__}, not an nn.Module")
    if weights is not None:
        path = Path(weights)
        load_into(gen, load_state_dict(path), f"generator.weights={path}")
    was = gen.training
    gen.eval()
    try:
        with torch.no_grad():
            z = torch.randn(2, z_dim, generator=torch.Generator().manual_seed(0))
            c = torch.zeros(2, dtype=torch.long) if num_classes else None
            out = gen(z, c)
    except Exception as e:  # noqa: BLE001
        raise ModelError(
            f"generator.builder={builder}: G(z, c) failed on a probe: {type(e).__name__}: {e}"
        ) from e
    finally:
        gen.train(was)
    want = (2, channels, size, size)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"generator.builder={builder}: G(z, c) gives {shape}, the data need {want}")
    if not torch.isfinite(out).all() or out.min() < 0 or out.max() > 1:
        raise ModelError(
            f"generator.builder={builder}: G(z, c) must give images in [0, 1] (the data's range), got "
            f"{float(out.min()):.3g}..{float(out.max()):.3g}"
        )
    return gen
