"""Differentiable, per-sample random views (batched): randomness per image, gradients, shapes, seeding."""

from __future__ import annotations

import pytest
import torch

from synthkit.config import ViewsConfig
from synthkit.data.views import Views, to_float


def _images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _all_distinct(v: torch.Tensor) -> bool:
    flat = v.flatten(1)
    return all(not torch.equal(flat[i], flat[j]) for i in range(len(v)) for j in range(i + 1, len(v)))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 16])
def test_shape_dtype_and_range(channels: int, size: int) -> None:
    views = Views(ViewsConfig(), channels, size)
    out = views(_images(6, channels, size))
    assert out.shape == (6, channels, size, size)
    assert out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("channels", [1, 3])
def test_identical_images_get_different_views(channels: int) -> None:
    torch.manual_seed(0)
    views = Views(ViewsConfig(), channels, 8)
    x = _images(1, channels, 8).expand(8, -1, -1, -1).contiguous()
    a = views(x)
    assert _all_distinct(a)  # parameters drawn per sample, not once per batch
    b = views(x)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("channels", [1, 3])
def test_views_are_differentiable(channels: int) -> None:
    torch.manual_seed(1)
    views = Views(ViewsConfig(), channels, 8)
    x = _images(4, channels, 8).requires_grad_(True)
    w = torch.randn(4, channels, 8, 8)
    (views(x) * w).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(dim=1) > 0).all()  # every image receives a gradient


def test_rgb_random_grayscale_is_applied() -> None:
    x = _images(4, 3, 8)
    gray = Views(ViewsConfig(grayscale_p=1.0, jitter_p=0.0), 3, 8)(x)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    colour = Views(ViewsConfig(grayscale_p=0.0, jitter_p=0.0), 3, 8)(x)
    assert not torch.allclose(colour[:, 0], colour[:, 1])


@pytest.mark.parametrize(
    ("channels", "size", "shape"),
    [
        (1, 8, (2, 3, 8, 8)),  # wrong channels
        (3, 8, (2, 1, 8, 8)),
        (1, 8, (2, 1, 16, 16)),  # wrong size
        (1, 8, (2, 1, 8, 16)),  # not square
        (1, 8, (1, 8, 8)),  # no batch dimension
    ],
)
def test_wrong_input_shape_is_a_value_error(channels: int, size: int, shape: tuple[int, ...]) -> None:
    views = Views(ViewsConfig(), channels, size)
    with pytest.raises(ValueError):
        views(torch.rand(*shape))
    with pytest.raises(ValueError):
        views.two_views(torch.rand(*shape))


@pytest.mark.parametrize("channels", [1, 3])
def test_two_views_are_two_different_views_of_the_input(channels: int) -> None:
    torch.manual_seed(2)
    views = Views(ViewsConfig(), channels, 8)
    x = _images(5, channels, 8)
    v1, v2 = views.two_views(x)
    assert v1.shape == x.shape and v2.shape == x.shape
    assert not torch.equal(v1, v2)
    assert all(not torch.equal(v1[i], v2[i]) for i in range(5))


def test_two_views_keep_images_apart() -> None:
    # a dark and a bright image: each pair of views comes from its own image
    torch.manual_seed(3)
    views = Views(ViewsConfig(jitter_p=0.0), 1, 8)
    x = torch.stack([torch.full((1, 8, 8), 0.1), torch.full((1, 8, 8), 0.9)])
    v1, v2 = views.two_views(x)
    for v in (v1, v2):
        torch.testing.assert_close(v.mean(dim=(1, 2, 3)), torch.tensor([0.1, 0.9]))


def test_seeded_views_are_reproducible() -> None:
    views = Views(ViewsConfig(), 3, 8)
    x = _images(4, 3, 8)
    torch.manual_seed(123)
    a = views(x)
    a1, a2 = views.two_views(x)
    torch.manual_seed(123)
    b = views(x)
    b1, b2 = views.two_views(x)
    assert torch.equal(a, b) and torch.equal(a1, b1) and torch.equal(a2, b2)
    torch.manual_seed(124)
    assert not torch.equal(views(x), a)


def test_to_float_scales_uint8_only() -> None:
    u = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    torch.testing.assert_close(to_float(u), torch.tensor([[0.0, 0.2, 1.0]]))
    f = torch.tensor([0.5, 2.0], dtype=torch.float64)
    out = to_float(f)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, f.float())


def test_crop_boxes_are_drawn_per_sample_within_the_recipe() -> None:
    """torchvision's RandomResizedCrop draw, for the whole batch at once: every box inside the image, its
    area a fraction crop_scale of the image's and its aspect ratio in [3/4, 4/3] (or the whole image when
    no try fits), each sample's box its own."""
    torch.manual_seed(5)
    views = Views(ViewsConfig(crop_scale=(0.3, 1.0)), 1, 16)
    box = views.crop_boxes(2000, torch.device("cpu"))
    x0, y0, w, h = box.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 16 + 1e-4).all() and (y0 + h <= 16 + 1e-4).all()
    full = (w == 16) & (h == 16)
    area, ratio = (w * h / 256)[~full], (w / h)[~full]
    assert (area >= 0.3 - 1e-5).all() and (area <= 1.0 + 1e-5).all()
    assert (ratio >= 3 / 4 - 1e-5).all() and (ratio <= 4 / 3 + 1e-5).all()
    assert area.std() > 0.1 and len(set(x0.tolist())) > 1900  # drawn per sample, not once per batch


def test_a_full_crop_is_the_image_and_a_flip_mirrors_it() -> None:
    x = _images(4, 3, 8)
    keep = Views(ViewsConfig(crop_scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0), 3, 8)
    torch.testing.assert_close(keep(x), x, atol=1e-5, rtol=0)
    flip = Views(ViewsConfig(crop_scale=(1.0, 1.0), flip_p=1.0, jitter_p=0.0, grayscale_p=0.0), 3, 8)
    torch.testing.assert_close(flip(x), x.flip(-1), atol=1e-5, rtol=0)


def test_a_crop_is_resampled_from_its_box() -> None:
    """A half-size crop of a horizontal ramp, resized back: the view is a ramp over the box's columns."""
    views = Views(ViewsConfig(crop_scale=(0.25, 0.25), flip_p=0.0, jitter_p=0.0), 1, 16)
    ramp = torch.arange(16.0).view(1, 1, 1, 16).expand(3, 1, 16, 16) / 15
    torch.manual_seed(7)
    box = views.crop_boxes(3, torch.device("cpu"))
    torch.manual_seed(7)
    out = views(ramp)
    for i in range(3):
        x0, w = float(box[i, 0]), float(box[i, 2])
        centres = x0 + (torch.arange(16.0) + 0.5) * w / 16 - 0.5  # source pixel coordinate of each column
        expected = centres.clamp(0, 15) / 15
        torch.testing.assert_close(out[i, 0, 8], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_a_generators_parameters_get_a_gradient_through_the_views(channels: int) -> None:
    """HSG's path: G's samples -> views -> a loss; every parameter of G receives a gradient, with the crop
    and every colour operation on."""
    torch.manual_seed(4)
    gen = torch.nn.Sequential(torch.nn.Linear(8, channels * 64), torch.nn.Sigmoid())
    views = Views(ViewsConfig(jitter_p=1.0, grayscale_p=0.0), channels, 8)
    x = gen(torch.randn(6, 8)).view(6, channels, 8, 8)
    v1, v2 = views.two_views(x)
    ((v1 - v2) ** 2).sum().backward()
    for p in gen.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_views_of_a_batch_run_the_same_ops_for_any_batch_size() -> None:
    """No per-sample loop: the number of aten ops of a view does not grow with the batch."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    views = Views(ViewsConfig(), 3, 8)
    counts = []
    for n in (4, 64):
        Count.n = 0
        with Count():
            views(_images(n, 3, 8))
        counts.append(Count.n)
    assert counts[0] == counts[1]
