"""Hinge GAN loss (Lim & Ye, 2017): values and gradients on hand-picked logits."""

from __future__ import annotations

import pytest
import torch

from synthkit.losses.hinge import d_hinge, g_hinge


def reference_d(real: list[float], fake: list[float]) -> float:
    return sum(max(0.0, 1 - r) for r in real) / len(real) + sum(max(0.0, 1 + f) for f in fake) / len(fake)


def test_confident_discriminator_has_zero_loss() -> None:
    # real logits >= 1 and fake logits <= -1 are outside the margin
    assert d_hinge(torch.tensor([2.0, 1.0, 5.0]), torch.tensor([-2.0, -1.0])).item() == 0.0


def test_d_hinge_hand_picked_values() -> None:
    real, fake = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.0, 2.0])
    # real: (0.5 + 2 + 0) / 3; fake: (1 + 3) / 2
    assert d_hinge(real, fake).item() == pytest.approx(2.5 / 3 + 2.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_d_hinge_matches_formula_on_random_logits(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    real, fake = torch.randn(7, generator=g) * 2, torch.randn(3, generator=g) * 2
    expected = reference_d(real.tolist(), fake.tolist())
    assert d_hinge(real, fake).item() == pytest.approx(expected, rel=1e-5)


def test_d_hinge_gradient_only_inside_the_margin() -> None:
    real = torch.tensor([2.0, 0.5], requires_grad=True)
    fake = torch.tensor([-3.0, 0.0, 1.0, -0.5], requires_grad=True)
    d_hinge(real, fake).backward()
    torch.testing.assert_close(real.grad, torch.tensor([0.0, -0.5]))
    torch.testing.assert_close(fake.grad, torch.tensor([0.0, 0.25, 0.25, 0.25]))


def test_g_hinge_is_the_negated_mean_fake_logit() -> None:
    fake = torch.tensor([1.0, -3.0, 5.0, 0.0], requires_grad=True)
    loss = g_hinge(fake)
    assert loss.item() == pytest.approx(-0.75)
    loss.backward()
    # no margin for G: every logit is pushed up, even very confident ones
    torch.testing.assert_close(fake.grad, torch.full((4,), -0.25))
