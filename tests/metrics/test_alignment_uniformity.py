"""Alignment and uniformity (Wang & Isola, 2020): parity with the paper's one-line definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from synthkit.metrics.alignment_uniformity import alignment, uniformity


def test_uniformity_matches_the_papers_formula_and_ignores_chunking() -> None:
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = F.normalize(x, dim=1)
    want = torch.pdist(z, p=2).pow(2).mul(-2).exp().mean().log().item()  # the paper's reference code
    assert uniformity(x, chunk_size=37) == pytest.approx(want, rel=1e-10)
    assert uniformity(x, chunk_size=1000) == pytest.approx(want, rel=1e-10)


def test_alignment_matches_the_papers_formula() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g)
    want = (F.normalize(x.double(), dim=1) - F.normalize(y.double(), dim=1)).norm(dim=1).pow(2).mean().item()
    assert alignment(x, y) == pytest.approx(want)
    assert alignment(x, x) == 0.0


def test_collapsed_features_are_less_uniform() -> None:
    g = torch.Generator().manual_seed(2)
    spread = torch.randn(200, 8, generator=g)
    collapsed = torch.ones(200, 8) + 0.01 * torch.randn(200, 8, generator=g)
    assert uniformity(collapsed) > uniformity(spread) + 1.0
