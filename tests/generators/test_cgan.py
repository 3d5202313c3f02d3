"""Conditional GAN: shapes, range, conditioning, projection discriminator and spectral normalisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from synthkit.generators.cgan import Discriminator, Generator, build_cgan, num_upsamplings
from synthkit.producer_configs.cgan import CGanConfig

Z = 8


def _g(channels: int = 1, size: int = 16, num_classes: int = 3) -> Generator:
    return Generator(Z, channels, size, num_classes, base=8)


def _d(channels: int = 1, size: int = 16, num_classes: int = 3) -> Discriminator:
    return Discriminator(channels, size, num_classes, base=8)


def _randomise_class_embeddings(g: Generator) -> None:
    # conditional BN starts at gamma=1, beta=0 for every class; give the classes distinct scales/shifts
    torch.manual_seed(0)
    for m in g.modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=1.0, std=0.5)


@pytest.mark.parametrize("size", [16, 28, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_range(size: int, channels: int) -> None:
    torch.manual_seed(0)
    g, d = _g(channels, size), _d(channels, size)
    z, c = torch.randn(4, Z), torch.tensor([0, 1, 2, 0])
    x = g(z, c)
    assert x.shape == (4, channels, size, size)
    assert x.min() >= 0.0 and x.max() <= 1.0
    logits = d(x, c)
    assert logits.shape == (4,)
    assert torch.isfinite(logits).all()


def test_build_cgan_uses_the_config_widths() -> None:
    cfg = CGanConfig(z_dim=Z, g_channels=4, d_channels=6)
    g, d = build_cgan(cfg, channels=3, size=16, num_classes=2)
    assert g.z_dim == Z and g.widths[-1] == 4 and g.out.out_channels == 3
    assert d.body[0].out_channels == 6 and d.body[0].in_channels == 3


@pytest.mark.parametrize("size", [10, 16, 28, 32, 64])
def test_num_upsamplings_is_the_most_doublings_from_at_least_4(size: int) -> None:
    n = num_upsamplings(size)
    assert 1 <= n <= 3
    assert size % 2**n == 0 and size // 2**n >= 4
    if n < 3:
        assert not (size % 2 ** (n + 1) == 0 and size // 2 ** (n + 1) >= 4)


def test_num_upsamplings_known_values() -> None:
    assert [num_upsamplings(s) for s in (16, 28, 32, 64)] == [2, 2, 3, 3]


@pytest.mark.parametrize("size", [7, 9, 6, 15])
def test_unbuildable_size_raises(size: int) -> None:
    with pytest.raises(ValueError):
        num_upsamplings(size)
    with pytest.raises(ValueError):
        _g(size=size)
    with pytest.raises(ValueError):
        _d(size=size)


def test_size_that_needs_one_doubling_builds() -> None:
    x = _g(size=10).eval()(torch.randn(2, Z), torch.tensor([0, 1]))
    assert x.shape == (2, 1, 10, 10)


def test_conditioning_changes_the_image_and_is_deterministic() -> None:
    g = _g()
    _randomise_class_embeddings(g)
    g.eval()
    z = torch.randn(1, Z).expand(3, -1)
    x = g(z, torch.tensor([0, 1, 2]))
    assert not torch.allclose(x[0], x[1]) and not torch.allclose(x[1], x[2])
    again = g(z, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(x, again, rtol=0, atol=0)
    # eval mode: an image does not depend on the rest of its batch
    torch.testing.assert_close(g(z[:1], torch.tensor([1])), x[1:2])


def test_latent_changes_the_image() -> None:
    g = _g().eval()
    x = g(torch.randn(2, Z), torch.tensor([1, 1]))
    assert not torch.allclose(x[0], x[1])


def test_unconditional_needs_no_condition() -> None:
    torch.manual_seed(0)
    g, d = _g(num_classes=0).eval(), _d(num_classes=0).eval()
    z = torch.randn(3, Z)
    x = g(z)
    assert x.shape == (3, 1, 16, 16)
    torch.testing.assert_close(g(z, torch.tensor([5, 6, 7])), x)  # a condition is ignored
    assert d(x).shape == (3,)
    assert not any(isinstance(m, nn.Embedding) for m in g.modules())


def test_conditional_generator_without_condition_raises() -> None:
    with pytest.raises(ValueError):
        _g()(torch.randn(2, Z))


@pytest.mark.parametrize("bad", [[0, 3], [-1, 0]])
def test_out_of_range_condition_raises(bad: list[int]) -> None:
    with pytest.raises(ValueError):
        _g(num_classes=3)(torch.randn(2, Z), torch.tensor(bad))


def test_discriminator_logit_depends_on_the_condition() -> None:
    torch.manual_seed(0)
    d = _d().eval()
    x = torch.rand(1, 1, 16, 16).expand(3, -1, -1, -1)
    logits = d(x, torch.tensor([0, 1, 2]))
    assert logits.shape == (3,)
    assert len(set(logits.tolist())) == 3
    # one logit per image: independent of the rest of the batch
    torch.testing.assert_close(d(x[:1], torch.tensor([2])), logits[2:])


def test_discriminator_distinguishes_images() -> None:
    torch.manual_seed(0)
    d = _d(num_classes=0).eval()
    logits = d(torch.rand(4, 1, 16, 16))
    assert len(set(logits.tolist())) == 4


def _spectral_normed(m: nn.Module) -> bool:
    if hasattr(m, "weight_orig") and hasattr(m, "weight_u"):
        return True
    parametrizations = getattr(m, "parametrizations", None)
    return parametrizations is not None and "weight" in parametrizations


@pytest.mark.parametrize("num_classes", [0, 3])
def test_discriminator_layers_are_spectrally_normalised(num_classes: int) -> None:
    d = _d(num_classes=num_classes)
    layers = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
    assert len(layers) >= 3 + (num_classes > 0)
    assert all(_spectral_normed(m) for m in layers)


def test_spectral_norm_bounds_the_largest_singular_value() -> None:
    torch.manual_seed(0)
    d = _d()
    x, c = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        for m in d.modules():  # make the raw weights far from norm 1
            if hasattr(m, "weight_orig"):
                m.weight_orig.mul_(7.0)
        for _ in range(10):  # power iteration runs once per training-mode forward
            d(x, c)
    d.eval()
    with torch.no_grad():
        d(x, c)
    for m in d.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            w = m.weight.detach().reshape(m.weight.shape[0], -1)
            assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=0.05)


def test_generator_has_no_spectral_norm() -> None:
    assert not any(_spectral_normed(m) for m in _g().modules())


def test_conditional_discriminator_needs_conditions() -> None:
    d = Discriminator(1, 16, 3, base=8)
    with pytest.raises(ValueError, match="conditional"):
        d(torch.rand(2, 1, 16, 16))
