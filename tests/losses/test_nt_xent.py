"""NT-Xent (SimCLR, Chen et al. 2020, eq. 1): parity with a loop-per-anchor reference and invariances."""

from __future__ import annotations

import math

import pytest
import torch

from synthkit.losses.nt_xent import nt_xent, nt_xent_per_view, per_sample_hardness


def reference_per_view(z1: torch.Tensor, z2: torch.Tensor, t: float) -> list[float]:
    """-log(exp(sim(i, pos)/t) / sum_{k != i} exp(sim(i, k)/t)), one anchor at a time, in float64."""
    z = [row.tolist() for row in torch.cat([z1, z2]).double()]
    n = len(z1)

    def cos(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    losses = []
    for i in range(2 * n):
        pos = i + n if i < n else i - n
        denom = sum(math.exp(cos(z[i], z[k]) / t) for k in range(2 * n) if k != i)
        losses.append(-math.log(math.exp(cos(z[i], z[pos]) / t) / denom))
    return losses


CASES = [(1, 3, 0.5), (4, 8, 0.5), (7, 5, 0.1), (16, 32, 1.0), (5, 2, 0.07)]


@pytest.mark.parametrize(("n", "d", "t"), CASES)
def test_matches_reference(n: int, d: int, t: float) -> None:
    g = torch.Generator().manual_seed(n * 100 + d)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    ref = torch.tensor(reference_per_view(z1, z2, t), dtype=torch.float32)
    per_view = nt_xent_per_view(z1, z2, temperature=t)
    assert per_view.shape == (2 * n,)
    torch.testing.assert_close(per_view, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(nt_xent(z1, z2, temperature=t), ref.mean(), rtol=1e-4, atol=1e-4)


def test_single_pair_has_zero_loss() -> None:
    # with one image the positive is the only other view: softmax over one candidate
    z1, z2 = torch.randn(1, 4), torch.randn(1, 4)
    torch.testing.assert_close(nt_xent_per_view(z1, z2), torch.zeros(2))


def test_symmetric_in_the_two_views() -> None:
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    torch.testing.assert_close(nt_xent(z1, z2), nt_xent(z2, z1))
    a, b = nt_xent_per_view(z1, z2), nt_xent_per_view(z2, z1)
    torch.testing.assert_close(a, torch.cat([b[6:], b[:6]]))


def test_invariant_to_scaling_each_projection() -> None:
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    s1, s2 = torch.rand(6, 1) * 10 + 0.1, torch.rand(6, 1) * 10 + 0.1
    torch.testing.assert_close(nt_xent_per_view(s1 * z1, s2 * z2), nt_xent_per_view(z1, z2))


def test_temperature_changes_the_loss() -> None:
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    assert not torch.allclose(nt_xent(z1, z2, 0.1), nt_xent(z1, z2, 1.0))


def test_identical_positives_score_lower_than_random_ones() -> None:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(16, 32, generator=g)
    random = nt_xent(z1, torch.randn(16, 32, generator=g))
    identical = nt_xent(z1, z1.clone())
    assert identical < random
    assert identical < math.log(2 * 16 - 1)  # better than chance (uniform over the 2N-1 candidates)


def test_gradient_flows_to_both_inputs() -> None:
    z1 = torch.randn(5, 8, requires_grad=True)
    z2 = torch.randn(5, 8, requires_grad=True)
    nt_xent(z1, z2).backward()
    for z in (z1, z2):
        assert z.grad is not None
        assert torch.isfinite(z.grad).all()
        assert (z.grad.abs().sum(dim=1) > 0).all()


def test_per_sample_hardness_averages_the_two_anchors() -> None:
    per_view = torch.arange(8, dtype=torch.float32)
    torch.testing.assert_close(per_sample_hardness(per_view), torch.tensor([2.0, 3.0, 4.0, 5.0]))
    z1, z2 = torch.randn(4, 6), torch.randn(4, 6)
    ref = reference_per_view(z1, z2, 0.5)
    expected = torch.tensor([(ref[i] + ref[i + 4]) / 2 for i in range(4)], dtype=torch.float32)
    torch.testing.assert_close(per_sample_hardness(nt_xent_per_view(z1, z2)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("s1", "s2"), [((4, 8), (5, 8)), ((4, 8), (4, 7)), ((8,), (8,)), ((2, 4, 8), (2, 4, 8))]
)
def test_shape_mismatch_is_a_value_error(s1: tuple[int, ...], s2: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        nt_xent_per_view(torch.randn(*s1), torch.randn(*s2))
    with pytest.raises(ValueError):
        nt_xent(torch.randn(*s1), torch.randn(*s2))
