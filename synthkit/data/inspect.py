"""``synthkit shards inspect``: what is in a shard set, in numbers and (optionally) as a picture.

The set is read with the safe reader (:func:`synthkit.shards.iter_samples`), so inspecting a set from an
untrusted source is fine, and in one streaming pass, so only counters, the per-sample ``hardness`` and
``pair_similarity`` values and a few images per grid row are kept in memory. Inspection never writes into
the set: a published set's directory holds exactly what its writer put there.

Example:
    >>> summary = inspect_shard_set("shards/cifar10-hard")  # doctest: +SKIP
    >>> summary["by_kind"], summary["hardness"]["mean"]  # doctest: +SKIP
    ({'hard': 1000}, 5.41)
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthkit.config import DataConfig
from synthkit.data.sources import FASHION_MNIST_ROOT, load_source
from synthkit.errors import SynthkitError
from synthkit.images import Panel, labelled_grid
from synthkit.shards import location as loc
from synthkit.shards.format import ShardError, printable
from synthkit.shards.reader import iter_samples, open_set

# Meta keys summarised as distributions when samples carry them.
STAT_KEYS = ("hardness", "pair_similarity")
# Rows of the grid of a set with neither conditions nor labels.
BLOCK_ROWS = 10


def _hashable(value: Any) -> Any:
    """Metadata is untrusted JSON: a list or object where a number belongs is counted by its JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def _label(value: Any) -> str:
    """A JSON object key for a condition or class value (JSON keys are strings; a missing value is null)."""
    return "null" if value is None else str(value)


def _order(value: Any) -> tuple[int, Any]:
    """Integers in numeric order, then anything else by its text, then null."""
    if value is None:
        return (2, "")
    if isinstance(value, int) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def _counts(counter: Counter) -> dict[str, int]:
    return {_label(k): counter[k] for k in sorted(counter, key=_order)}


def describe(values: list[float]) -> dict[str, float | int]:
    """Count, mean, population std, min, quartiles (linear interpolation) and max of ``values``."""
    x = np.asarray(values, dtype=np.float64)
    q25, median, q75 = np.percentile(x, [25, 50, 75])
    return {
        "count": int(x.size),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "q25": float(q25),
        "median": float(median),
        "q75": float(q75),
        "max": float(x.max()),
    }


def _open_set(directory: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    shard_set = open_set(directory)
    assert shard_set.manifest is not None
    return shard_set.location, shard_set.manifest


#: the grid's panel of each sample kind (a column group; other kinds get a panel of their own name)
KIND_PANELS = {"hard": "hard samples", "pair_a": "positive pairs, a | b", "pair_b": "positive pairs, a | b"}
REAL_ROW = 10  # real images in the grid's comparison row


def _ascii(value: Any, limit: int = 28) -> str:
    """Text from the set for the grid's bitmap font: printable, ASCII, at most ``limit`` characters."""
    text = printable(value).encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Grid:
    """The first ``per_row`` images of every condition and every class, and the first block of the set, each
    split by panel (the sample's kind: hard samples, pairs, real images, ...), in set order."""

    def __init__(self, per_row: int) -> None:
        self.per_row = per_row
        self.by_condition: dict[Any, dict[str, list[np.ndarray]]] = {}
        self.by_cls: dict[Any, dict[str, list[np.ndarray]]] = {}
        self.first: dict[str, list[np.ndarray]] = {}
        self.panels: list[str] = []  # in the order the set first shows them

    def add(self, image: np.ndarray, condition: Any, has_condition: bool, cls: int | None, kind: Any) -> None:
        panel = KIND_PANELS.get(kind) if isinstance(kind, str) else None
        panel = panel or _ascii(kind if kind is not None else "samples")
        if panel not in self.panels:
            self.panels.append(panel)
        # a pair panel keeps whole pairs: an even number of tiles
        limit = self.per_row - self.per_row % 2 if panel == KIND_PANELS["pair_a"] else self.per_row
        limit = max(limit, 2) if panel == KIND_PANELS["pair_a"] else limit
        if has_condition:
            self._keep(self.by_condition.setdefault(condition, {}).setdefault(panel, []), image, limit)
        if cls is not None:
            self._keep(self.by_cls.setdefault(cls, {}).setdefault(panel, []), image, limit)
        self._keep(self.first.setdefault(panel, []), image, limit * BLOCK_ROWS)

    @staticmethod
    def _keep(bucket: list[np.ndarray], image: np.ndarray, limit: int) -> None:
        if len(bucket) < limit:
            bucket.append(image)

    def rows(self) -> tuple[str, list[Any], list[dict[str, list[np.ndarray]]]]:
        """Rows as (group_by, labels, images by panel): by condition if a sample has one, else by cls, else
        blocks of ``per_row`` in set order."""
        for group_by, buckets in (("condition", self.by_condition), ("cls", self.by_cls)):
            if any(k is not None for k in buckets):
                labels = sorted(buckets, key=_order)
                return group_by, labels, [buckets[k] for k in labels]
        n = max(len(v) for v in self.first.values()) if self.first else 0
        step = self.per_row
        chunks = [{p: v[i : i + step] for p, v in self.first.items()} for i in range(0, n, step)]
        return "none", [None] * len(chunks), chunks


def _real_images(manifest: dict[str, Any], real: str | None, root: str | None, size: tuple[int, int]) -> Any:
    """The comparison row's real images and where they come from, or (None, why not).

    ``real="auto"``: the source of the run that made the set (its manifest's ``data`` section), read only
    from the source's own default location (a path from the set's manifest is never read); a source name:
    that source (``root`` its data root); None: no real row.
    """
    if real is None:
        return None, "not asked for"
    if real == "auto":
        data = (
            (manifest.get("config") or {}).get("data") if isinstance(manifest.get("config"), dict) else None
        )
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None, "the manifest names no data source (--real NAME adds one)"
        defaults = {"fashion-mnist": FASHION_MNIST_ROOT}
        if data.get("root") is not None and data.get("root") != defaults.get(data["name"]):
            # a path named by the set is never read: the user names it
            return (
                None,
                f"the set's source {data['name']!r} has its own root: --real NAME --root DIR shows it",
            )
        name, root = data["name"], None
    else:
        name = real
    try:
        images = load_source(DataConfig(name=name, root=root, size=max(8, size[0])), "train").images
    except (SynthkitError, ValueError, TypeError) as e:
        return None, f"cannot read real images of {name!r}: {' '.join(str(e).split())}"
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:REAL_ROW]
    return list(images[pick.sort().values].permute(0, 2, 3, 1).numpy()), name


def _write_grid(
    grid: _Grid, set_dir: str, path: str | os.PathLike[str], real: list[np.ndarray] | None, real_from: str
) -> dict[str, Any]:
    out = Path(path)
    group_by, labels, rows = grid.rows()
    if not any(images for row in rows for images in row.values()):
        raise ShardError(f"{set_dir}: the set holds no samples, so there is no grid to draw")
    names = list(grid.panels)
    pair = KIND_PANELS["pair_a"]
    pair_width = max(2, grid.per_row - grid.per_row % 2)  # whole pairs
    panels = [Panel(p, pair_width, pairs=True) if p == pair else Panel(p, grid.per_row) for p in names]
    word = {"condition": "condition", "cls": "class"}.get(group_by, "samples")
    table: list[tuple[str, list[list[np.ndarray]]]] = []
    if real:
        panels.insert(0, Panel(f"real ({_ascii(real_from, 20)})", grid.per_row))
        table.append(("real", [real[: grid.per_row]]))
    for i, (label, row) in enumerate(zip(labels, rows, strict=True)):
        if group_by == "none":
            text = f"{i * grid.per_row}-{(i + 1) * grid.per_row - 1}"
        else:
            text = f"{word} {_ascii(_label(label), 16)}"
        table.append((text, ([[]] if real else []) + [row.get(p, []) for p in names]))
    caption = {
        "condition": "one row per condition",
        "cls": "one row per class (cls)",
        "none": "samples in set order",
    }[group_by]
    image, _ = labelled_grid(table, panels, caption=f"{_ascii(Path(set_dir).name, 40)}: {caption}")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    return {
        "path": str(out),
        "group_by": group_by,
        "rows": [_label(k) for k in labels],
        "panels": [p.title for p in panels],
        "real": real_from if real else None,
        **({} if real else {"no_real_row": real_from}),
    }


def inspect_shard_set(
    directory: str | os.PathLike[str],
    *,
    grid: str | os.PathLike[str] | None = None,
    per_row: int = 10,
    real: str | None = "auto",
    root: str | None = None,
) -> dict[str, Any]:
    """Summarise a published shard set; optionally also draw its grid (same single pass over the set).

    Args:
        directory: the set directory; it must have a ``manifest.json``.
        grid: where to write a PNG grid (see :func:`inspect_grid`); never inside ``directory``.
        per_row: images per grid row.
        real: the grid's row of real images: ``"auto"`` (the source the set's run trained on, when it can be
            read from the source's default location), a source name (``root`` its data root), or None.

    Returns:
        A JSON-serialisable dict: ``dir``, ``name``, ``total``, ``shards``, ``producer`` (the manifest's),
        ``by_kind``, ``by_condition`` and ``by_cls`` (value -> count, keys as strings, ``"null"`` for a
        missing value; empty when no sample has a condition or a cls), ``hardness`` and ``pair_similarity``
        (:func:`describe` of the values, or None when no sample has them), ``images`` (``sizes`` as
        ``"HxW"`` and ``modes`` ``"L"``/``"RGB"`` -> count) and ``grid`` (None, or what was drawn).

    Raises:
        ShardError: not a published set, or anything malformed in it (named by shard and sample).
    """
    if per_row < 1:
        raise ValueError(f"per_row must be >= 1, got {per_row}")
    set_dir, manifest = _open_set(directory)
    if grid is not None:
        _refuse_grid_inside(set_dir, grid)
    tally = _Tally(_Grid(per_row) if grid is not None else None)
    for sample in iter_samples(set_dir):
        tally.add(sample)
    producer = manifest.get("producer")
    return {
        "dir": set_dir,
        "name": manifest.get("name"),
        "total": sum(tally.kinds.values()),
        "shards": len(manifest["shards"]),
        "producer": producer.get("name") if isinstance(producer, dict) else producer,
        "by_kind": _counts(tally.kinds),
        "by_condition": _counts(tally.conditions),
        "by_cls": _counts(tally.classes),
        **{key: describe(v) if v else None for key, v in tally.values.items()},
        "images": {"sizes": dict(tally.sizes.most_common()), "modes": dict(tally.modes.most_common())},
        "grid": _grid(tally.collector, set_dir, grid, manifest, real, root, tally.sizes)
        if tally.collector is not None
        else None,
    }


def _refuse_grid_inside(set_dir: str, grid: str | os.PathLike[str]) -> None:
    """Inspection never writes into a published set (a remote set cannot be written into from here)."""
    if loc.is_url(set_dir):
        return
    grid_path = Path(grid).resolve()
    if Path(set_dir).resolve() in (grid_path, *grid_path.parents):
        raise ShardError(
            f"refusing to write the grid {grid} inside the published shard set {set_dir}; "
            "choose a path outside it"
        )


def _finite_number(value: Any) -> bool:
    """A number from the metadata that a statistic can use: JSON like 1e999 parses as inf, and a single one
    would make every statistic meaningless (true and false are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Tally:
    """What :func:`inspect_shard_set` counts, one sample at a time: counters, the values of ``STAT_KEYS``
    and (with a ``collector``) the grid's images."""

    def __init__(self, collector: _Grid | None) -> None:
        self.kinds: Counter = Counter()
        self.conditions: Counter = Counter()
        self.classes: Counter = Counter()
        self.sizes: Counter = Counter()
        self.modes: Counter = Counter()
        self.values: dict[str, list[float]] = {key: [] for key in STAT_KEYS}
        self.collector = collector

    def add(self, sample: dict[str, Any]) -> None:
        meta, image, cls = sample["meta"], sample["image"], sample["cls"]
        self.kinds[_hashable(meta.get("kind"))] += 1
        # every field is present (null where it does not apply): a sample has a condition when it was
        # generated with one, or unconditionally (condition null, condition_source "none")
        has_condition = meta.get("condition") is not None or meta.get("condition_source") is not None
        condition = _hashable(meta.get("condition"))
        if has_condition:
            self.conditions[condition] += 1
        if cls is not None:
            self.classes[cls] += 1
        for key in STAT_KEYS:
            if _finite_number(meta.get(key)):
                self.values[key].append(float(meta[key]))
        self.sizes[f"{image.shape[0]}x{image.shape[1]}"] += 1
        self.modes["L" if image.shape[2] == 1 else "RGB"] += 1
        if self.collector is not None:
            self.collector.add(image, condition, has_condition, cls, meta.get("kind"))


def _grid(
    collector: _Grid,
    set_dir: str,
    path: str | os.PathLike[str],
    manifest: dict[str, Any],
    real: str | None,
    root: str | None,
    sizes: Counter,
) -> dict[str, Any]:
    h, w = (int(v) for v in sizes.most_common(1)[0][0].split("x")) if sizes else (8, 8)
    images, real_from = _real_images(manifest, real, root, (h, w))
    return _write_grid(collector, set_dir, path, images, real_from)


def inspect_grid(
    directory: str | os.PathLike[str],
    path: str | os.PathLike[str],
    per_row: int = 10,
    *,
    real: str | None = "auto",
    root: str | None = None,
) -> dict[str, Any]:
    """Write a PNG grid of a shard set to ``path`` that explains itself: one labelled row per condition,
    else per cls, else rows in set order; one panel (column group, titled) per kind of sample (hard samples,
    pairs with a and b side by side and marked, real images, ...); a first row of real images to compare
    with (``real``: see :func:`inspect_shard_set`; the grid's ``no_real_row`` says why there is none).

    Each row holds the first ``per_row`` samples (in set order) of its condition or class and kind; without
    either, rows of ``per_row`` from the first ``per_row`` x ``BLOCK_ROWS`` samples. Images of other sizes
    than the most common one are resized to it. Drawn by :func:`synthkit.images.labelled_grid` (2x nearest
    upscale), ``synthkit.images.grid_height`` pixels high. ``path`` may not lie inside the set.

    Returns:
        ``{"path", "group_by": "condition" | "cls" | "none", "rows": row labels, "panels": titles,
        "real": the real row's source or None, "no_real_row": why not (only without one)}``.
    """
    return inspect_shard_set(directory, grid=path, per_row=per_row, real=real, root=root)["grid"]


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable text ``synthkit shards inspect`` prints.

    Names, kinds, conditions and producers come from the set, so every piece of them is passed through
    :func:`synthkit.shards.format.printable`: a set cannot write terminal escape sequences to the screen.
    """

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{printable(k)}: {v}" for k, v in d.items())

    lines = [
        f"{printable(summary['dir'])}: set {printable(repr(summary['name']))}, {summary['total']} samples in "
        f"{summary['shards']} shard(s), producer {printable(repr(summary['producer']))}",
        f"  kind       {counts(summary['by_kind'])}",
    ]
    if summary["by_condition"]:
        lines.append(f"  condition  {counts(summary['by_condition'])}")
    if summary["by_cls"]:
        lines.append(f"  cls        {counts(summary['by_cls'])}")
    for key in STAT_KEYS:
        s = summary[key]
        if s is not None:
            stats = "  ".join(f"{k} {v:.4f}" for k, v in s.items() if k != "count")
            lines.append(f"  {key:<10} n={s['count']}  {stats}")
    images = summary["images"]
    lines.append(f"  images     sizes (HxW) {counts(images['sizes'])}; modes {counts(images['modes'])}")
    if summary["grid"] is not None:
        g = summary["grid"]
        lines.append(f"  grid       {printable(g['path'])} ({len(g['rows'])} rows, by {g['group_by']})")
    return "\n".join(lines)
