"""Broken images: planted blank, saturated and non-finite images are counted, real-looking ones are not."""

from __future__ import annotations

import torch

from synthkit.config import DataConfig
from synthkit.data.sources import load_source
from synthkit.metrics.broken import broken_images


def test_planted_blank_images_are_counted_as_broken() -> None:
    real = load_source(DataConfig(name="digits", size=16), "test").images[:50].clone()
    real[[4, 9, 30]] = 0  # blank black
    real[11] = 255  # blank white
    real[20] = (torch.rand(1, 16, 16) > 0.5).to(torch.uint8) * 255  # salt and pepper at the extremes only
    result = broken_images(real, chunk_size=7)
    assert result["constant"] == 4 and result["indices"]["constant"] == [4, 9, 11, 30]
    assert result["saturated"] == 1 and result["indices"]["saturated"] == [20]
    assert result["broken"] == 5 and result["fraction"] == 5 / 50


def test_non_finite_float_images_are_counted_once() -> None:
    x = torch.rand(6, 3, 8, 8)
    x[2, 0, 0, 0] = float("nan")
    x[3] = float("inf")
    result = broken_images(x)
    assert result["non_finite"] == 2 and result["indices"]["non_finite"] == [2, 3]
    assert result["constant"] == 0 and result["broken"] == 2


def test_real_images_are_not_broken() -> None:
    images = load_source(DataConfig(name="digits", size=16), "train").images
    assert broken_images(images)["broken"] == 0
