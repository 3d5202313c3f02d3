"""Memorisation: planted near-copies of real points are the suspects, and nothing else is."""

from __future__ import annotations

import pytest
import torch

from synthkit.metrics.memorisation import memorisation


def test_planted_near_copies_are_found_as_suspects() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 8, generator=g)
    copied = torch.tensor([3, 77, 150, 399])
    fresh = torch.randn(300, 8, generator=g)
    fake = torch.cat([fresh[:100], real[copied] + 1e-3 * torch.randn(4, 8, generator=g), fresh[100:]])
    result = memorisation(real, fake, threshold=0.1, top=10, chunk_size=64)
    suspects = result["suspects"]
    assert {s["fake_index"] for s in suspects} == {100, 101, 102, 103}
    assert {(s["fake_index"], s["real_index"]) for s in suspects} == {
        (100 + i, int(c)) for i, c in enumerate(copied)
    }
    assert result["suspect_count"] == 4
    # the copies are also the four nearest pairs, listed first, nearest first
    assert {p["fake_index"] for p in result["nearest_pairs"][:4]} == {100, 101, 102, 103}
    ratios = [p["ratio"] for p in result["nearest_pairs"]]
    assert ratios == sorted(ratios) and ratios[3] < 0.01 < ratios[4]


def test_fresh_samples_from_the_same_distribution_are_not_suspects() -> None:
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(500, 6, generator=g), torch.randn(300, 6, generator=g)
    result = memorisation(real, fake, threshold=0.05)
    assert result["suspect_count"] == 0
    assert result["median_ratio"] > 0.5


def test_result_does_not_depend_on_the_chunk_size() -> None:
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(120, 4, generator=g), torch.randn(90, 4, generator=g)
    small, large = memorisation(real, fake, chunk_size=5), memorisation(real, fake, chunk_size=1000)
    # blocks of different shapes round differently in the last bits, nothing more
    key = lambda r: [(p["fake_index"], p["real_index"], p["suspect"]) for p in r["nearest_pairs"]]  # noqa: E731
    assert key(small) == key(large) and small["suspect_count"] == large["suspect_count"]
    for a, b in zip(small["nearest_pairs"], large["nearest_pairs"], strict=True):
        assert a["ratio"] == pytest.approx(b["ratio"], rel=1e-5)
