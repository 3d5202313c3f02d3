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

from synthkit.images import common_shape, condition_grid
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


class _Grid:
    """The first ``per_row`` images of every condition and every class, and the first block of the set."""

    def __init__(self, per_row: int) -> None:
        self.per_row = per_row
        self.by_condition: dict[Any, list[np.ndarray]] = {}
        self.by_cls: dict[Any, list[np.ndarray]] = {}
        self.first: list[np.ndarray] = []

    def add(self, image: np.ndarray, condition: Any, has_condition: bool, cls: int | None) -> None:
        if has_condition:
            self._keep(self.by_condition.setdefault(condition, []), image, self.per_row)
        if cls is not None:
            self._keep(self.by_cls.setdefault(cls, []), image, self.per_row)
        self._keep(self.first, image, self.per_row * BLOCK_ROWS)

    @staticmethod
    def _keep(bucket: list[np.ndarray], image: np.ndarray, limit: int) -> None:
        if len(bucket) < limit:
            bucket.append(image)

    def rows(self) -> tuple[str, list[Any], list[list[np.ndarray]]]:
        """Rows as (group_by, labels, images): by condition if a sample has one, else by cls, else a block."""
        for group_by, buckets in (("condition", self.by_condition), ("cls", self.by_cls)):
            if any(k is not None for k in buckets):
                labels = sorted(buckets, key=_order)
                return group_by, labels, [buckets[k] for k in labels]
        chunks = [self.first[i : i + self.per_row] for i in range(0, len(self.first), self.per_row)]
        return "none", [None] * len(chunks), chunks


def _write_grid(grid: _Grid, set_dir: str, path: str | os.PathLike[str]) -> dict[str, Any]:
    out = Path(path)
    group_by, labels, rows = grid.rows()
    flat = [im for row in rows for im in row]
    if not flat:
        raise ShardError(f"{set_dir}: the set holds no samples, so there is no grid to draw")
    images = np.stack(common_shape(flat))
    row_of = np.array([r for r, row in enumerate(rows) for _ in row])
    out.parent.mkdir(parents=True, exist_ok=True)
    condition_grid(images, row_of, per_row=grid.per_row).save(out, format="PNG")
    return {"path": str(out), "group_by": group_by, "rows": [_label(k) for k in labels]}


def inspect_shard_set(
    directory: str | os.PathLike[str], *, grid: str | os.PathLike[str] | None = None, per_row: int = 10
) -> dict[str, Any]:
    """Summarise a published shard set; optionally also draw its grid (same single pass over the set).

    Args:
        directory: the set directory; it must have a ``manifest.json``.
        grid: where to write a PNG grid (see :func:`inspect_grid`); never inside ``directory``.
        per_row: images per grid row.

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
    local = None if loc.is_url(set_dir) else Path(set_dir).resolve()
    if (
        grid is not None
        and local is not None
        and local in (Path(grid).resolve(), *Path(grid).resolve().parents)
    ):
        raise ShardError(
            f"refusing to write the grid {grid} inside the published shard set {set_dir}; "
            "choose a path outside it"
        )
    kinds: Counter = Counter()
    conditions: Counter = Counter()
    classes: Counter = Counter()
    sizes: Counter = Counter()
    modes: Counter = Counter()
    values: dict[str, list[float]] = {key: [] for key in STAT_KEYS}
    collector = _Grid(per_row) if grid is not None else None
    for sample in iter_samples(set_dir):
        meta, image, cls = sample["meta"], sample["image"], sample["cls"]
        kinds[_hashable(meta.get("kind"))] += 1
        # every field is present (null where it does not apply): a sample has a condition when it was
        # generated with one, or unconditionally (condition null, condition_source "none")
        has_condition = meta.get("condition") is not None or meta.get("condition_source") is not None
        condition = _hashable(meta.get("condition"))
        if has_condition:
            conditions[condition] += 1
        if cls is not None:
            classes[cls] += 1
        for key in STAT_KEYS:
            value = meta.get(key)
            # JSON like 1e999 parses as inf; a single one would make every statistic meaningless.
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                values[key].append(float(value))
        sizes[f"{image.shape[0]}x{image.shape[1]}"] += 1
        modes["L" if image.shape[2] == 1 else "RGB"] += 1
        if collector is not None:
            collector.add(image, condition, has_condition, cls)

    producer = manifest.get("producer")
    return {
        "dir": set_dir,
        "name": manifest.get("name"),
        "total": sum(kinds.values()),
        "shards": len(manifest["shards"]),
        "producer": producer.get("name") if isinstance(producer, dict) else producer,
        "by_kind": _counts(kinds),
        "by_condition": _counts(conditions),
        "by_cls": _counts(classes),
        **{key: describe(v) if v else None for key, v in values.items()},
        "images": {"sizes": dict(sizes.most_common()), "modes": dict(modes.most_common())},
        "grid": _write_grid(collector, set_dir, grid) if collector is not None else None,
    }


def inspect_grid(
    directory: str | os.PathLike[str], path: str | os.PathLike[str], per_row: int = 10
) -> dict[str, Any]:
    """Write a PNG grid of a shard set to ``path``: one row per condition, else per cls, else one block.

    Each row holds the first ``per_row`` samples (in set order) of its condition or class; a set with
    neither gives a block of its first ``per_row`` x ``BLOCK_ROWS`` samples. Images of other sizes than the
    most common one are resized to it. Drawn by :func:`synthkit.images.condition_grid` (2x nearest upscale,
    1 px white border), so the PNG is ``rows * (H + 2) * 2`` pixels high. ``path`` may not lie inside the set.

    Returns:
        ``{"path", "group_by": "condition" | "cls" | "none", "rows": row labels}``.
    """
    return inspect_shard_set(directory, grid=path, per_row=per_row)["grid"]


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
