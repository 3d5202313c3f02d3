"""Labelled grids: every tile where the layout says, pairs marked, the same pixels every time."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from synthkit.images import EMPTY, PAIR_COLOURS, Panel, grid_height, labelled_grid


def _images(n: int, h: int = 6, w: int = 5, c: int = 1, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, 256, (n, h, w, c), dtype=np.uint8))


def test_tiles_sit_where_the_layout_says_and_pairs_are_marked() -> None:
    real, hard, pairs = _images(3), _images(4, seed=1), _images(4, c=3, seed=2)
    rows = [("real", [real]), ("cond 0", [[], hard, pairs]), ("cond 1", [[], hard[:1], []])]
    panels = [Panel("real", 3), Panel("hard samples", 4), Panel("pairs", 4, pairs=True)]
    image, layout = labelled_grid(rows, panels, scale=3, caption="a caption")
    pixels = np.asarray(image)
    assert image.mode == "RGB" and layout.rows == ["real", "cond 0", "cond 1"]
    assert image.height == grid_height(3, 6 * 3, caption=True, pairs=True)
    for (r, p, j), (x0, y0, x1, y1) in layout.tiles.items():
        source = [row for _, row in rows][r][p][j]
        expected = np.repeat(np.repeat(source, 3, axis=0), 3, axis=1)
        if expected.shape[2] == 1:
            expected = np.repeat(expected, 3, axis=2)  # gray tiles drawn as RGB
        assert np.array_equal(pixels[y0:y1, x0:x1], expected), (r, p, j)
    # 3 real + 4 hard + 4 pair tiles in row "cond 0" + 1 in row "cond 1"; nothing drawn for empty panels
    assert len(layout.tiles) == 3 + 4 + 4 + 1
    # a pair's members are side by side (1 px apart), pairs further apart; a and b marked in their colours
    a0, b0, a1 = (layout.tiles[(1, 2, j)] for j in range(3))
    assert b0[0] - a0[2] < a1[0] - b0[2]
    for box, colour in ((a0, PAIR_COLOURS[0]), (b0, PAIR_COLOURS[1])):
        assert tuple(pixels[box[3] + 2, (box[0] + box[2]) // 2]) == colour
    # a row with fewer samples than the panel is wide shows empty tiles there
    y = layout.tiles[(2, 1, 0)][1]  # row "cond 1", one hard sample: its second tile is empty
    assert tuple(pixels[y + 1, layout.tiles[(1, 1, 1)][0] + 1]) == EMPTY


def test_the_same_inputs_give_the_same_bytes() -> None:
    rows = [("c 0", [_images(2)]), ("c 1", [_images(2, seed=3)])]

    def png() -> bytes:
        buf = io.BytesIO()
        labelled_grid(rows, [Panel("samples", 2)])[0].save(buf, format="PNG")
        return buf.getvalue()

    assert png() == png()
    assert Image.open(io.BytesIO(png())).size[1] == grid_height(2, 12, caption=False, pairs=False)
    with pytest.raises(ValueError, match="at least one image"):
        labelled_grid([("empty", [[]])], [Panel("samples", 2)])
