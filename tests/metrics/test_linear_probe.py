"""Linear probe on frozen features: separable data, determinism, and chance level on random labels."""

from __future__ import annotations

import pytest
import torch

from synthkit.metrics import linear_probe_accuracy


def _clusters(n: int, seed: int, classes: int = 4, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(classes, dim) * 5 + 3  # an offset and scale that standardisation must remove
    y = torch.arange(n) % classes
    return centers[y] + 0.3 * torch.randn(n, dim, generator=g), y


def test_separable_clusters_are_perfect() -> None:
    x, y = _clusters(200, 0)
    xt, yt = _clusters(80, 1)
    assert linear_probe_accuracy(x, y, xt, yt, epochs=10, batch_size=100, lr=0.1) == 1.0


def test_deterministic_for_a_seed() -> None:
    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(300, 12, generator=g), torch.randn(200, 12, generator=g)
    y = (x[:, 0] + 0.8 * torch.randn(300, generator=g) > 0).long()
    yt = (xt[:, 0] + 0.8 * torch.randn(200, generator=g) > 0).long()
    runs = [linear_probe_accuracy(x, y, xt, yt, epochs=2, batch_size=150, lr=0.1, seed=s) for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert 0.6 < runs[0] <= 1.0 and 0.6 < runs[2] <= 1.0


def test_random_labels_give_chance_on_held_out_data() -> None:
    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(400, 16, generator=g), torch.randn(800, 16, generator=g)
    y = torch.randint(0, 4, (400,), generator=g)
    yt = torch.randint(0, 4, (800,), generator=g)
    assert abs(linear_probe_accuracy(x, y, xt, yt, epochs=10, batch_size=200, lr=0.1) - 0.25) < 0.07


def test_full_batch_and_constant_features_work() -> None:
    x, y = _clusters(64, 0)
    x = torch.cat([x, torch.ones(64, 1)], dim=1)  # a constant feature has std 0
    assert linear_probe_accuracy(x, y, x, y, epochs=20, batch_size=10_000, lr=0.1) == 1.0


def test_bad_inputs_are_rejected() -> None:
    x, y = _clusters(20, 0)
    with pytest.raises(ValueError, match="dimension"):
        linear_probe_accuracy(x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="labels"):
        linear_probe_accuracy(x, y[:5], x, y)
