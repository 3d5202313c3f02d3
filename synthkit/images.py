"""Image helpers several stages share: float tensors to uint8 arrays, and sample grids.

A grid has one row per condition (or any other row label). :func:`labelled_grid` draws the pictures a user
reads on their own (the export's ``preview.png``, ``shards inspect --grid``, the trackers' sample grids, the
quickstart's comparison): row labels, panel titles, pair members marked, real images next to samples.
:func:`condition_grid` and :func:`rows_grid` draw bare grids (the audit report captions its own). All are
deterministic, with PIL.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """N x C x H x W floats in [0, 1] -> N x H x W x C uint8 (rounded, clamped), on the CPU."""
    return (
        (x.detach().clamp(0, 1) * 255.0)
        .round()
        .to(torch.uint8)
        .permute(0, 2, 3, 1)
        .contiguous()
        .cpu()
        .numpy()
    )


def common_shape(images: list[np.ndarray]) -> list[np.ndarray]:
    """Bring mixed sizes and modes to one H x W x C: the most common size, RGB if any is RGB."""
    sizes = Counter(im.shape[:2] for im in images)
    h, w = sizes.most_common(1)[0][0]
    channels = max(im.shape[2] for im in images)
    out = []
    for im in images:
        if im.shape[:2] != (h, w):
            pil = Image.fromarray(im[:, :, 0] if im.shape[2] == 1 else im)
            im = np.asarray(pil.resize((w, h), Image.BILINEAR)).reshape(h, w, -1)
        if im.shape[2] != channels:
            im = np.repeat(im, channels, axis=2)
        out.append(im)
    return out


def condition_grid(
    images: np.ndarray, conditions: np.ndarray, per_row: int = 10, scale: int = 2
) -> Image.Image:
    """A grid of uint8 N x H x W x C ``images``: one row per distinct value of ``conditions`` (sorted), up to
    ``per_row`` samples each, upscaled ``scale`` x (nearest)."""
    conds = sorted(set(conditions.tolist()))
    h, w, c = images.shape[1:]
    grid = np.full(((h + 2) * len(conds), (w + 2) * per_row, c), 255, dtype=np.uint8)
    for r, cond in enumerate(conds):
        for j, i in enumerate(np.flatnonzero(conditions == cond)[:per_row]):
            grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, j * (w + 2) + 1 : j * (w + 2) + 1 + w] = images[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def rows_grid(rows: list[list[np.ndarray]], scale: int = 3) -> Image.Image:
    """One grid row per list of images (converted to one size and channel count by ``common_shape``)."""
    flat = common_shape([im for row in rows for im in row])
    row_of = np.array([r for r, row in enumerate(rows) for _ in row])
    per_row = max(len(row) for row in rows)
    return condition_grid(np.stack(flat), row_of, per_row=per_row, scale=scale)


# --------------------------------------------------------------------------- labelled grids

#: PIL's built-in bitmap font: fixed glyphs, so a grid's pixels do not depend on the fonts installed
FONT = ImageFont.load_default_imagefont()
PAIR_COLOURS = ((31, 119, 180), (255, 127, 14))  # the marks under pair_a and pair_b tiles
EMPTY = (236, 236, 236)  # a tile with no image (a row with fewer samples than the panel is wide)
_PAD, _GAP, _PAIR_GAP, _PANEL_GAP, _MARK = 4, 2, 6, 12, 3


@dataclass(frozen=True)
class Panel:
    """A column group of :func:`labelled_grid`: a title over it, ``width`` tiles a row and, with ``pairs``,
    tiles that come as pairs (a, b, a, b, ...): the two members of a pair side by side, a gap between pairs,
    and a coloured mark under each member (``PAIR_COLOURS``: a, then b)."""

    title: str
    width: int
    pairs: bool = False


@dataclass
class GridLayout:
    """Where :func:`labelled_grid` put things: ``tiles[(row, panel, j)]`` is the ``(x0, y0, x1, y1)`` box of
    tile j (after scaling), ``rows`` the row labels and ``panels`` the panels' titles."""

    rows: list[str]
    panels: list[str]
    tiles: dict[tuple[int, int, int], tuple[int, int, int, int]] = field(default_factory=dict)


def grid_height(rows: int, tile_height: int, *, caption: bool, pairs: bool) -> int:
    """The pixel height of a :func:`labelled_grid` of ``rows`` rows of tiles ``tile_height`` high (after
    scaling), with or without a caption line and a pair panel (whose a/b marks take a line)."""
    line = int(FONT.getbbox("Ag")[3]) + 2
    top = _PAD + (line if caption else 0) + line + (line if pairs else 0)
    return top + rows * (tile_height + _MARK + _GAP + 2) + _PAD


def _text_width(text: str) -> int:
    return int(FONT.getbbox(text)[2]) if text else 0


def _tile(image: np.ndarray, h: int, w: int, scale: int) -> Image.Image:
    im = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).convert("RGB")
    if im.size != (w, h):
        im = im.resize((w, h), Image.BILINEAR)
    return im.resize((w * scale, h * scale), Image.NEAREST)


def labelled_grid(
    rows: list[tuple[str, list[list[np.ndarray]]]],
    panels: list[Panel],
    *,
    scale: int = 2,
    caption: str | None = None,
) -> tuple[Image.Image, GridLayout]:
    """A grid that explains itself: a label at the left of every row, a title over every panel (column
    group), pair members side by side and marked, and an optional caption line on top.

    Args:
        rows: ``(label, [images of panel 0, images of panel 1, ...])``; each list holds uint8 H x W x C
            images (any sizes and channel counts: brought to the most common size, RGB), at most the panel's
            ``width``; missing tiles are drawn empty (``EMPTY``).
        panels: the column groups, left to right (e.g. real images of the row's condition, then samples).
        scale: nearest-neighbour upscale of every tile (small images stay readable next to the text).
        caption: one line above the titles (what the rows are, where the samples come from).

    Returns:
        The RGB image and its :class:`GridLayout`. Drawn with PIL's bitmap font, so the same inputs give the
        same pixels on every machine.
    """
    flat = [im for _, groups in rows for group in groups for im in group]
    if not flat:
        raise ValueError("a grid needs at least one image")
    h, w = Counter(im.shape[:2] for im in flat).most_common(1)[0][0]
    painter = _GridPainter(rows, panels, (h, w), scale, caption)
    if caption:
        painter.caption(caption)
    x_panel = painter.label_w
    for p_i, (panel, pw) in enumerate(zip(panels, painter.widths, strict=True)):
        painter.panel(p_i, panel, x_panel)
        x_panel += pw + _PANEL_GAP
    painter.row_labels()
    return painter.canvas, painter.layout


def _panel_width(panel: Panel, tile_w: int) -> int:
    """The pixel width of a panel's tiles and the gaps between them."""
    if not panel.pairs:
        return panel.width * tile_w + (panel.width - 1) * _GAP
    n = (panel.width + 1) // 2
    return panel.width * tile_w + n * _GAP // 2 + (n - 1) * _PAIR_GAP


def _gap_after(panel: Panel, j: int) -> int:
    """The gap after tile ``j`` of a panel: narrow inside a pair, wider between pairs."""
    if not panel.pairs:
        return _GAP
    return _GAP // 2 if j % 2 == 0 else _PAIR_GAP


class _GridPainter:
    """Draws one :func:`labelled_grid`: its sizes are fixed when it is made, each part has its method."""

    def __init__(
        self,
        rows: list[tuple[str, list[list[np.ndarray]]]],
        panels: list[Panel],
        image_size: tuple[int, int],
        scale: int,
        caption: str | None,
    ) -> None:
        self.rows, self.image_size, self.scale = rows, image_size, scale
        self.th, self.tw = image_size[0] * scale, image_size[1] * scale
        self.line = int(FONT.getbbox("Ag")[3]) + 2
        self.label_w = max(_text_width(label) for label, _ in rows) + 2 * _PAD
        self.widths = [max(_panel_width(p, self.tw), _text_width(p.title)) for p in panels]
        pairs = any(p.pairs for p in panels)
        self.y_title = _PAD + (self.line if caption else 0)
        self.top = self.y_title + self.line + (self.line if pairs else 0)
        self.row_h = self.th + _MARK + _GAP + 2
        width = self.label_w + sum(self.widths) + _PANEL_GAP * (len(panels) - 1) + _PAD
        width = max(width, _text_width(caption or "") + 2 * _PAD)
        self.height = grid_height(len(rows), self.th, caption=bool(caption), pairs=pairs)
        self.canvas = Image.new("RGB", (width, self.height), (255, 255, 255))
        self.draw = ImageDraw.Draw(self.canvas)
        self.layout = GridLayout([label for label, _ in rows], [p.title for p in panels])

    def caption(self, text: str) -> None:
        self.draw.text((_PAD, _PAD), text, fill=(0, 0, 0), font=FONT)

    def panel(self, p_i: int, panel: Panel, x_panel: int) -> None:
        """Panel ``p_i`` at ``x_panel``: its title (and a/b marks), a separator before it, its rows."""
        self.draw.text((x_panel, self.y_title), panel.title, fill=(0, 0, 0), font=FONT)
        xs = []
        x = x_panel
        for j in range(panel.width):
            xs.append(x)
            x += self.tw + _gap_after(panel, j)
        if panel.pairs:
            for j in range(min(2, panel.width)):
                at = (xs[j] + self.tw // 2 - 3, self.y_title + self.line)
                self.draw.text(at, "ab"[j], fill=PAIR_COLOURS[j], font=FONT)
        if p_i:
            x_sep = x_panel - _PANEL_GAP // 2
            self.draw.line([(x_sep, self.top - 2), (x_sep, self.height - _PAD)], fill=(170, 170, 170))
        for r, (_, groups) in enumerate(self.rows):
            images = groups[p_i] if p_i < len(groups) else []
            if images:  # else nothing of this panel in this row (e.g. the real row of a samples panel)
                self._tiles(r, p_i, panel, xs, images)

    def _tiles(self, r: int, p_i: int, panel: Panel, xs: list[int], images: list[np.ndarray]) -> None:
        """Row ``r`` of a panel: its images (pair members marked), empty tiles after them."""
        y = self.top + r * self.row_h
        h, w = self.image_size
        for j in range(panel.width):
            box = (xs[j], y, xs[j] + self.tw, y + self.th)
            if j >= len(images):
                self.draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=EMPTY)
                continue
            self.canvas.paste(_tile(images[j], h, w, self.scale), box[:2])
            self.layout.tiles[(r, p_i, j)] = box
            if panel.pairs:
                mark = [box[0], y + self.th + 1, box[2] - 1, y + self.th + _MARK]
                self.draw.rectangle(mark, fill=PAIR_COLOURS[j % 2])

    def row_labels(self) -> None:
        """Each row's label at its left, centred on the tiles' height."""
        for r, (label, _) in enumerate(self.rows):
            y_row = self.top + r * self.row_h
            y = y_row + (self.th - self.line) // 2
            self.draw.text((_PAD, max(y, y_row)), label, fill=(0, 0, 0), font=FONT)
