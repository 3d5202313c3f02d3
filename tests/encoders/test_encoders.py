"""Backbones and the contrastive encoder: output sizes, channel handling, and batched feature extraction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from synthkit.config import EncoderConfig
from synthkit.encoders.backbones import build_backbone
from synthkit.encoders.model import Encoder, extract_features

SMALL = EncoderConfig(backbone="convnet", width=4, proj_hidden=16, proj_dim=8)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("width", [4, 6])
def test_convnet_dims(channels: int, width: int) -> None:
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(width=width, proj_hidden=16, proj_dim=8), channels).eval()
    x = torch.rand(3, channels, 16, 16)
    assert enc.feature_dim == 8 * width
    assert enc.features(x).shape == (3, 8 * width)
    assert enc(x).shape == (3, 8)


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet18_dims(channels: int) -> None:
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(backbone="resnet18", proj_hidden=16, proj_dim=8), channels).eval()
    assert enc.feature_dim == 512
    assert enc.backbone.stem.in_channels == channels
    x = torch.rand(2, channels, 16, 16)
    with torch.no_grad():
        assert enc.features(x).shape == (2, 512)
        assert enc(x).shape == (2, 8)


def test_resnet_keeps_small_images_at_full_resolution() -> None:
    net = build_backbone("resnet18", 3, 0)
    assert net.stem.stride == (1, 1) and net.stem.kernel_size == (3, 3)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    # 16 px in, 2 px before pooling: three stride-2 stages only (no stem stride, no max-pool)
    trunk_out = net.trunk[:-2](net.stem(torch.rand(1, 3, 16, 16)))
    assert trunk_out.shape[-1] == 2


def test_input_channels_must_match() -> None:
    enc = Encoder(SMALL, 1).eval()
    with pytest.raises(RuntimeError):
        enc(torch.rand(2, 3, 16, 16))


def test_encoder_centres_inputs() -> None:
    enc = Encoder(SMALL, 1).eval()
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(enc.features(x), enc.backbone(x * 2 - 1))


@pytest.mark.parametrize("name", ["vit", "resnet", ""])
def test_unknown_backbone_raises(name: str) -> None:
    with pytest.raises(ValueError, match="backbone"):
        build_backbone(name, 3, 8)
    with pytest.raises(ValueError):
        Encoder(EncoderConfig(backbone=name), 3)


def _images(n: int = 10, channels: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, 16, 16), generator=torch.Generator().manual_seed(0)).to(
        torch.uint8
    )


@pytest.mark.parametrize("training", [True, False])
def test_extract_features_runs_in_eval_mode_and_restores_the_flag(training: bool) -> None:
    torch.manual_seed(0)
    enc = Encoder(SMALL, 1).train(training)
    modes: list[bool] = []
    enc.backbone.register_forward_pre_hook(lambda m, _: modes.append(m.training))
    bn = enc.backbone.trunk[0]
    stats = bn.running_mean.clone()
    feats = extract_features(enc, _images(), batch_size=4)
    assert modes and not any(modes)
    assert enc.training is training and all(m.training is training for m in enc.modules())
    assert torch.equal(bn.running_mean, stats)  # eval mode: running statistics untouched
    assert feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert feats.shape == (10, enc.feature_dim)
    assert not feats.requires_grad


def test_extract_features_is_independent_of_the_batch_size() -> None:
    torch.manual_seed(0)
    enc = Encoder(SMALL, 3)
    images = _images(7, 3)
    one_pass = extract_features(enc, images, batch_size=512)
    for bs in (1, 3):
        torch.testing.assert_close(extract_features(enc, images, batch_size=bs), one_pass)


def test_extract_features_scales_uint8_and_accepts_float() -> None:
    torch.manual_seed(0)
    enc = Encoder(SMALL, 1)
    images = _images(5)
    from_uint8 = extract_features(enc, images)
    from_float = extract_features(enc, images.double() / 255.0)
    torch.testing.assert_close(from_uint8, from_float)
    enc.eval()
    with torch.no_grad():
        torch.testing.assert_close(from_uint8, enc.features(images.float() / 255.0))


def test_extract_features_of_nothing_is_empty() -> None:
    enc = Encoder(SMALL, 1)
    out = extract_features(enc, torch.zeros(0, 1, 16, 16, dtype=torch.uint8))
    assert out.shape == (0, enc.feature_dim)


@pytest.mark.parametrize("backbone", ["convnet", "resnet18"])
def test_chunked_input_equals_concatenated_batch(backbone: str) -> None:
    """The stem-per-chunk path HSG uses is the same function as one concatenated batch."""
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(backbone=backbone, width=4, proj_hidden=16, proj_dim=8), 1).train()
    a, b, c = torch.rand(3, 1, 16, 16), torch.rand(2, 1, 16, 16), torch.rand(3, 1, 16, 16)
    whole = enc(torch.cat([a, b, c]))
    b = b.clone().requires_grad_()
    chunked = enc([a, b, c])
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    chunked.sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0
