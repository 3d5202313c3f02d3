"""The registries are the one list of what exists: config and CLI read them, plugins extend them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from synthkit.cli import build_parser
from synthkit.config import ConfigError, EncoderConfig, load_pipeline
from synthkit.encoders.model import Encoder
from synthkit.registry import BACKBONES, EXTRACTORS, OBJECTIVES, PRODUCERS, SOURCES, Registry


@pytest.mark.parametrize("registry", [BACKBONES, SOURCES, EXTRACTORS])
def test_every_builtin_resolves(registry: Registry) -> None:
    assert registry.names()
    for name in registry.names():
        assert callable(registry.get(name)), name


@pytest.mark.parametrize("registry", [PRODUCERS, OBJECTIVES])
def test_every_builtin_entry_has_a_config_and_an_implementation(registry) -> None:
    for name in registry.names():
        entry = registry.get(name)
        cfg_cls, impl = entry.config_class(), entry.impl_class()
        assert cfg_cls.__dataclass_fields__[cfg_cls.TAG].default == name  # the tag selects its own class
        assert isinstance(impl, type)


def test_config_rejects_an_unregistered_name_and_lists_the_registry() -> None:
    with pytest.raises(
        ConfigError, match="encoder.backbone: 'vit' is not one of convnet, resnet18, resnet50"
    ):
        load_pipeline(None, ["--encoder.backbone=vit"])
    with pytest.raises(ConfigError, match="generator.kind: 'vae' is not one of cgan, diffusion, naive"):
        load_pipeline(None, ["--generator.kind=vae"])


class _Tiny(nn.Module):
    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = width

    def forward(self, x):
        return self.net(x if isinstance(x, torch.Tensor) else torch.cat(list(x)))


def test_a_registered_backbone_is_valid_config_and_builds() -> None:
    BACKBONES.register("tiny-test", _Tiny)
    try:
        cfg = load_pipeline(None, ["--encoder.backbone=tiny-test", "--encoder.width=5"])
        enc = Encoder(cfg.encoder, 1)
        assert enc.feature_dim == 5 and enc(torch.rand(2, 1, 8, 8)).shape == (2, cfg.encoder.proj_dim)
        assert "tiny-test" in BACKBONES.names()
        with pytest.raises(ConfigError, match="registered already"):
            BACKBONES.register("tiny-test", _Tiny)
    finally:
        BACKBONES._entries.pop("tiny-test")
        BACKBONES._resolved.pop("tiny-test", None)
    with pytest.raises(ConfigError):
        EncoderConfig(backbone="tiny-test")


def test_cli_choices_come_from_the_registries(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["shards", "convert", "--data", "nope", "--out", "x"])
    err = capsys.readouterr().err
    assert all(name in err for name in SOURCES.names())
