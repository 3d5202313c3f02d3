"""DiffAugment (Zhao et al., NeurIPS 2020): shape, per-sample randomness, gradients, shift and cutout."""

from __future__ import annotations

import pytest
import torch

from synthkit.generators.diffaugment import POLICIES, diff_augment

ALL = ["color", "translation", "cutout", "color,translation,cutout"]


def _distinct(x: torch.Tensor) -> int:
    return len({tuple(row.tolist()) for row in x.flatten(1)})


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[i, j] = x[i + dy, j + dx], zero outside the image."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[..., i, j] = x[..., i + dy, j + dx]
    return out


def test_policy_names() -> None:
    assert set(POLICIES) == {"color", "translation", "cutout"}


@pytest.mark.parametrize("policy", ALL)
@pytest.mark.parametrize("shape", [(4, 1, 16, 16), (3, 3, 8, 8), (2, 3, 8, 16)])
def test_shape_and_dtype_are_kept(policy: str, shape: tuple[int, ...]) -> None:
    x = torch.rand(*shape)
    out = diff_augment(x, policy)
    assert out.shape == x.shape and out.dtype == x.dtype


def test_empty_policy_is_the_identity() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(diff_augment(x, ""), x)


@pytest.mark.parametrize("policy", ALL)
def test_randomness_is_per_sample(policy: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16).expand(16, -1, -1, -1).contiguous()
    out = diff_augment(x, policy)
    if policy.startswith("color"):
        assert _distinct(out) == 16
    else:
        assert _distinct(out) > 1


@pytest.mark.parametrize("policy", ALL)
def test_gradient_reaches_every_image(policy: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    w = torch.randn(4, 3, 16, 16)
    (diff_augment(x, policy) * w).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(dim=1) > 0).all()


@pytest.mark.parametrize(("h", "w"), [(16, 16), (8, 16)])
def test_translation_moves_a_bright_pixel_within_the_bound(h: int, w: int) -> None:
    torch.manual_seed(0)
    bound_y, bound_x = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    x = torch.zeros(32, 1, h, w)
    x[:, :, h // 2, w // 2] = 1.0
    out = diff_augment(x, "translation")
    moves = set()
    for img in out[:, 0]:
        assert (img == 1.0).sum() == 1 and (img == 0.0).sum() == h * w - 1  # moved, never blurred
        y, xx = (img == 1.0).nonzero()[0].tolist()
        dy, dx = y - h // 2, xx - w // 2
        assert abs(dy) <= bound_y and abs(dx) <= bound_x
        moves.add((dy, dx))
    assert len(moves) > 1 and any(m != (0, 0) for m in moves)


def test_translation_is_a_zero_filled_shift_of_the_whole_image() -> None:
    torch.manual_seed(1)
    x = torch.rand(8, 2, 8, 8) + 0.5  # no zeros inside, so the fill is recognisable
    out = diff_augment(x, "translation")
    for k in range(8):
        candidates = [
            (dy, dx)
            for dy in range(-1, 2)
            for dx in range(-1, 2)
            if torch.equal(out[k], _shift(x[k], dy, dx))
        ]
        assert len(candidates) == 1, f"sample {k} is not a shift within +-1"


def _rows_cols(zero: torch.Tensor) -> tuple[list[int], list[int]]:
    rows = zero.any(dim=1).nonzero().flatten().tolist()
    cols = zero.any(dim=0).nonzero().flatten().tolist()
    return rows, cols


@pytest.mark.parametrize(("h", "w"), [(16, 16), (8, 16)])
def test_cutout_zeroes_one_block_of_half_the_side(h: int, w: int) -> None:
    torch.manual_seed(0)
    ch, cw = h // 2, w // 2
    x = torch.ones(64, 2, h, w)
    out = diff_augment(x, "cutout")
    full = 0
    for img in out:
        assert torch.equal(img[0], img[1])  # the same block in every channel
        zero = img[0] == 0
        assert torch.equal(img[0][~zero], torch.ones(int((~zero).sum())))  # only zeroes, nothing else
        rows, cols = _rows_cols(zero)
        assert rows and cols
        # one axis-aligned, contiguous block
        assert rows == list(range(rows[0], rows[-1] + 1)) and cols == list(range(cols[0], cols[-1] + 1))
        assert int(zero.sum()) == len(rows) * len(cols)
        # the block is ch x cw, clipped only where it crosses the border (its centre stays inside)
        for got, full_side, lo, hi, side in (
            (len(rows), ch, rows[0], rows[-1], h),
            (len(cols), cw, cols[0], cols[-1], w),
        ):
            if lo > 0 and hi < side - 1:
                assert got == full_side
            else:
                assert full_side // 2 <= got <= full_side
        full += len(rows) == ch and len(cols) == cw
    assert full > 0


def test_cutout_keeps_the_rest_of_the_image() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16) + 0.1
    out = diff_augment(x, "cutout")
    kept = out != 0
    assert torch.equal(out[kept], x[kept])
    assert (kept.flatten(1).float().mean(dim=1) >= 0.75 - 1e-6).all()  # an 8x8 block at most of 16x16


def test_color_keeps_a_flat_image_flat() -> None:
    # brightness, saturation and contrast act per image, so a constant image stays constant
    torch.manual_seed(0)
    x = torch.full((6, 1, 8, 8), 0.5)
    out = diff_augment(x, "color")
    flat = out.flatten(1)
    assert torch.allclose(flat, flat[:, :1].expand_as(flat))
    assert _distinct(out[:, :, 0, 0]) == 6
