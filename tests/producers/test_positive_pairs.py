"""HPG: schedules at known steps, the pair loss, G_b's start, and the fixed-encoder similarity."""

from __future__ import annotations

import math

import pytest
import torch

from synthkit.config import EncoderConfig, HPGConfig
from synthkit.encoders.model import Encoder
from synthkit.generators.cgan import build_cgan
from synthkit.producer_configs.cgan import CGanConfig
from synthkit.producers.positive_pairs import (
    AdaptiveTarget,
    GeneratorPair,
    backbone_similarity,
    pair_loss,
    schedule_progress,
    target_similarity,
)


def test_schedule_progress_runs_from_warmup_to_the_last_epoch() -> None:
    cfg = HPGConfig(warmup_epochs=2)
    assert schedule_progress(cfg, 0.0, 10) == 0.0
    assert schedule_progress(cfg, 2.0, 10) == 0.0
    assert schedule_progress(cfg, 6.0, 10) == pytest.approx(0.5)
    assert schedule_progress(cfg, 10.0, 10) == 1.0
    assert schedule_progress(HPGConfig(warmup_epochs=5), 5.0, 5) == 1.0


def test_linear_and_cosine_targets_at_known_points() -> None:
    lin = HPGConfig(schedule="linear", s_start=0.9, s_end=0.5)
    assert target_similarity(lin, 0.0) == pytest.approx(0.9)
    assert target_similarity(lin, 0.25) == pytest.approx(0.8)
    assert target_similarity(lin, 1.0) == pytest.approx(0.5)
    assert target_similarity(lin, 3.0) == pytest.approx(0.5)  # clipped progress
    cos = HPGConfig(schedule="cosine", s_start=0.9, s_end=0.5)
    assert target_similarity(cos, 0.0) == pytest.approx(0.9)
    assert target_similarity(cos, 0.5) == pytest.approx(0.7)
    assert target_similarity(cos, 0.25) == pytest.approx(0.5 + 0.4 * (1 + math.cos(math.pi / 4)) / 2)
    assert target_similarity(cos, 1.0) == pytest.approx(0.5)
    # cosine is flatter than linear at the start, steeper in the middle
    assert target_similarity(cos, 0.1) > target_similarity(lin, 0.1)


def test_adaptive_target_follows_real_positives_within_bounds() -> None:
    cfg = HPGConfig(schedule="adaptive", s_start=0.9, s_end=0.5, adaptive_margin=0.1)
    assert target_similarity(cfg, 0.3, None) == pytest.approx(0.9)  # nothing measured yet
    assert target_similarity(cfg, 0.3, 0.75) == pytest.approx(0.65)
    assert target_similarity(cfg, 0.3, 0.99) == pytest.approx(0.89)
    capped = HPGConfig(schedule="adaptive", s_start=0.8, s_end=0.5, adaptive_margin=0.1)
    assert target_similarity(capped, 0.3, 0.99) == pytest.approx(0.8)
    assert target_similarity(cfg, 0.3, 0.2) == pytest.approx(0.5)
    ema = AdaptiveTarget(momentum=0.5)
    assert ema.update(0.8) == pytest.approx(0.8)
    assert ema.update(0.6) == pytest.approx(0.7)


def test_pair_loss_is_zero_at_the_target_and_asymmetric_by_mu() -> None:
    s = torch.tensor([0.7, 0.7])
    assert float(pair_loss(s, 0.7, 2.0, 0.5)) == 0.0
    assert float(pair_loss(torch.tensor([0.9]), 0.7, 2.0, 0.5)) == pytest.approx(0.4)  # too similar
    assert float(pair_loss(torch.tensor([0.5]), 0.7, 2.0, 0.5)) == pytest.approx(0.2)  # too distinct


def test_g_b_starts_as_a_perturbed_copy_and_drifts_independently() -> None:
    torch.manual_seed(0)
    gen_cfg = CGanConfig(z_dim=8, g_channels=8, d_channels=8)
    g_a, _ = build_cgan(gen_cfg, 1, 16, 3)
    z, c = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    exact = GeneratorPair(gen_cfg, HPGConfig(init_noise=0.0), g_a).eval()
    assert torch.equal(exact.generator_a(z, c), exact.generator_b(z, c))
    pairs = GeneratorPair(gen_cfg, HPGConfig(init_noise=0.05), g_a)
    pairs.eval()
    with torch.no_grad():
        x_a, x_b = pairs.generator_a(z, c), pairs.generator_b(z, c)
    assert not torch.equal(x_a, x_b)
    assert float((x_a - x_b).abs().mean()) < 0.2 * float(x_a.abs().mean())  # close: a small perturbation
    pairs.train()
    opt = pairs.optimizer()
    loss = pairs.generator_b(z, c).mean()  # a gradient for G_b only
    opt.zero_grad()
    loss.backward()
    opt.step()
    pairs.eval()
    assert not torch.equal(pairs.generator_a(z, c), pairs.generator_b(z, c))
    assert all(
        a is not b
        for a, b in zip(pairs.generator_a.parameters(), pairs.generator_b.parameters(), strict=True)
    )


def test_backbone_similarity_sends_gradient_to_images_not_encoder() -> None:
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(width=4, proj_hidden=8, proj_dim=4), 1).train()
    stats = enc.backbone.trunk[0].running_mean.clone()
    x_a = torch.rand(3, 1, 8, 8, requires_grad=True)
    x_b = torch.rand(3, 1, 8, 8, requires_grad=True)
    s = backbone_similarity(enc, x_a, x_b)
    assert s.shape == (3,) and bool(((s <= 1 + 1e-6) & (s >= -1 - 1e-6)).all())
    s.sum().backward()
    assert x_a.grad is not None and x_a.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())
    assert enc.training and all(p.requires_grad for p in enc.parameters())  # restored
    assert torch.equal(enc.backbone.trunk[0].running_mean, stats)  # eval mode: statistics untouched
    assert torch.allclose(backbone_similarity(enc, x_a, x_a), torch.ones(3), atol=1e-5)
