"""The audit's inputs, streamed: features of both sets batch by batch, never every image at once.

A shard set is read through the safe reader (:func:`synthkit.shards.iter_samples`: one shard decoded at a
time), a named source (``digits``, ``fashion-mnist``: small, in memory) is cut into the same batches, and
every batch is converted to the extractor's input, passed through it on the audit's device and dropped.
What stays is what the metrics need: ``N x D`` float32 features (on the device), the few metadata fields
the audit reads (:data:`META_KEYS`), labels, and what image metrics fold in per batch (broken-image counts,
recomputed hardness, FID's running moments), through :class:`BatchHooks`.

The report needs a few images (grids, the hardest samples, pairs, memorisation suspects and their real
neighbours, broken examples). Which ones is known only after the neighbour search, so they are **fetched
afterwards by a second read of only the shards that hold them** (:meth:`SetSide.fetch`) rather than kept
in a reservoir: a reservoir would have to guess, during the stream, which samples the search will name,
and the nearest pairs can be anywhere in the set. A shard is vouched for by the manifest's sha256, so the
second read gives the same bytes or refuses (ShardError); it reads at most one shard per image shown, and
at most the shards of the set. A named source is already in memory and is indexed.

Memory is therefore the features, the slim metadata, one shard decoded by the reader, and one batch of
``batch_size`` images (capped at :data:`BATCH_BYTES` of pixels, so a set of 4096 x 4096 images streams one
image at a time) as decoded arrays, one uint8 tensor and the extractor's float input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from synthkit.errors import AuditError
from synthkit.metrics.extractors import FeatureExtractor
from synthkit.shards import iter_samples, open_set
from synthkit.shards.format import IMAGE_SHAPE
from synthkit.shards.reader import ShardSet, raise_first, read_shard

# The metadata fields the audit reads (pairs, hardness, conditions, counts by kind); the rest is dropped as
# it is read, so 1M samples cost a few small dicts each, not their whole metadata.
META_KEYS = (
    "kind",
    "pair_id",
    "generator_step",
    "step",
    "pair_similarity",
    "hardness",
    "condition",
    "condition_k",
    "condition_source",
)
BATCH_BYTES = 64 * 2**20  # uint8 pixels per streamed batch at most (x 10: the arrays, tensor and floats)


@dataclass
class Batch:
    """``images``: uint8 N x C x H x W; ``start``: index of the first image in the audited sequence."""

    start: int
    images: torch.Tensor
    metas: list[dict[str, Any]]
    labels: list[int | None]


def _slim(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in META_KEYS if k in meta}


def _shape_text(shape: tuple[int, ...]) -> str:
    h, w, c = shape
    return f"{h}x{w}x{c}"


def batch_rows(shape: tuple[int, int, int], batch_size: int) -> int:
    """Images per streamed batch: ``batch_size``, fewer for images so large that it passes BATCH_BYTES."""
    return max(1, min(batch_size, BATCH_BYTES // max(1, int(np.prod(shape)))))


@dataclass
class SetSide:
    """A published shard set streamed in order: its manifest, and how many samples are audited.

    ``keep``: sorted indices of the samples audited (a seeded subset of the real side), or None for the
    first ``count``. ``fetch`` reads images again by audited position.
    """

    shard_set: ShardSet
    what: str
    count: int
    keep: np.ndarray | None = None
    shape: tuple[int, int, int] | None = None
    _first: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def manifest(self) -> dict[str, Any]:
        assert self.shard_set.manifest is not None
        return self.shard_set.manifest

    def _samples(self) -> Iterator[dict[str, Any]]:
        return iter_samples(self.shard_set.location)

    def peek(self) -> tuple[int, int, int]:
        """The set's H x W x C: the manifest's ``image_shape``, else the first image's (reads one shard)."""
        declared = self.manifest.get(IMAGE_SHAPE)
        if self.shape is None and isinstance(declared, list) and len(declared) == 3:
            self.shape = tuple(int(v) for v in declared)  # type: ignore[assignment]
        if self.shape is None:
            first = next(iter(self._samples()), None)
            if first is None:
                raise AuditError(f"{self.shard_set.location}: the set holds no samples")
            self.shape = tuple(first["image"].shape)  # type: ignore[assignment]
        assert self.shape is not None
        return self.shape

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """The audited samples in order, in batches; mixed image sizes are an AuditError."""
        rows = batch_rows(self.peek(), batch_size)
        images: list[np.ndarray] = []
        metas: list[dict[str, Any]] = []
        labels: list[int | None] = []
        start = produced = 0
        wanted = iter(self.keep.tolist()) if self.keep is not None else None
        next_wanted = next(wanted, None) if wanted is not None else None
        for position, sample in enumerate(self._samples()):
            if wanted is not None:
                if position != next_wanted:
                    continue
                next_wanted = next(wanted, None)
            image = sample["image"]
            if image.shape != self.shape:
                raise AuditError(
                    f"{self.what} images have mixed sizes ({_shape_text(self.peek())} first, then "
                    f"{_shape_text(image.shape)} at sample {sample['__key__']!r}); an audit needs one size "
                    "per set"
                )
            images.append(image)
            metas.append(_slim(sample["meta"]))
            labels.append(sample["cls"])
            produced += 1
            if len(images) == rows:
                yield _batch(start, images, metas, labels)
                start += len(images)
                images, metas, labels = [], [], []
            if produced >= self.count:  # before the reader opens the next shard
                break
        if images:
            yield _batch(start, images, metas, labels)
        if produced == 0:
            raise AuditError(f"{self.shard_set.location}: the set holds no samples")

    def fetch(self, positions: list[int]) -> dict[int, np.ndarray]:
        """Images (H x W x C uint8) at audited ``positions``, reading only the shards that hold them."""
        originals = {p: int(self.keep[p]) if self.keep is not None else p for p in positions}
        starts = np.cumsum([0, *[ref.count or 0 for ref in self.shard_set.shards]])
        by_shard: dict[int, list[int]] = {}
        for p, original in originals.items():
            by_shard.setdefault(int(np.searchsorted(starts, original, side="right")) - 1, []).append(p)
        out: dict[int, np.ndarray] = {}
        for shard_index, wanted in sorted(by_shard.items()):
            read = read_shard(self.shard_set.shards[shard_index], self.shard_set.rules())
            raise_first(read)  # the bytes were checked on the first read: a change now is refused too
            for p in wanted:
                out[p] = read.samples[originals[p] - int(starts[shard_index])]["image"]
        return out


def _batch(start: int, images: list[np.ndarray], metas: list[dict], labels: list[int | None]) -> Batch:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return Batch(start, x, metas, labels)


def open_side(location: str, what: str, limit: int | None) -> SetSide:
    """A published set as a side of the audit: the first ``limit`` samples (all when None)."""
    shard_set = open_set(location)
    total = shard_set.total or 0
    if total == 0:
        raise AuditError(f"{location}: the set holds no samples")
    return SetSide(shard_set, what, min(total, limit) if limit is not None else total)


@dataclass
class TensorSide:
    """A named source already in memory (N x C x H x W uint8), cut into the same batches."""

    images: torch.Tensor
    labels: torch.Tensor | None

    @property
    def count(self) -> int:
        return int(self.images.shape[0])

    def batches(self, batch_size: int) -> Iterator[Batch]:
        rows = batch_rows(tuple(self.images.shape[1:]), batch_size)  # type: ignore[arg-type]
        for start in range(0, self.count, rows):
            x = self.images[start : start + rows]
            labels = (
                self.labels[start : start + rows].tolist() if self.labels is not None else [None] * len(x)
            )
            yield Batch(start, x, [{} for _ in range(len(x))], labels)

    def fetch(self, positions: list[int]) -> dict[int, np.ndarray]:
        return {p: self.images[p].permute(1, 2, 0).contiguous().numpy() for p in positions}


@dataclass
class Streamed:
    """What a side leaves behind: features on the device, slim metadata, labels, input shapes."""

    features: torch.Tensor
    metas: list[dict[str, Any]]
    labels: list[int | None]
    shape: tuple[int, int, int] | None = None  # C x H x W of the images read
    prepared: tuple[int, int, int] | None = None  # C x H x W the extractor took


BatchHook = Callable[[Batch], None]


def stream_features(
    batches: Iterator[Batch],
    count: int,
    ext: FeatureExtractor,
    device: torch.device,
    *,
    batch_size: int,
    hooks: list[BatchHook] = (),  # type: ignore[assignment]
    on_features: Callable[[torch.Tensor], None] | None = None,
) -> Streamed:
    """Prepare and extract every batch on ``device``; ``hooks`` see each raw batch, ``on_features`` each
    batch's features (FID's moments); only the features and the slim metadata are kept."""
    features: torch.Tensor | None = None
    metas: list[dict[str, Any]] = []
    labels: list[int | None] = []
    shape = prepared = None
    filled = 0
    for batch in batches:
        for hook in hooks:
            hook(batch)
        x = ext.prepare(batch.images)
        shape, prepared = tuple(batch.images.shape[1:]), tuple(x.shape[1:])
        f = ext.features(x, batch_size, device)
        if features is None:  # one allocation: no list of chunks concatenated at the end (2x the memory)
            features = torch.empty((count, f.shape[1]), dtype=torch.float32, device=device)
        features[filled : filled + f.shape[0]] = f
        filled += f.shape[0]
        if on_features is not None:
            on_features(f)
        metas += batch.metas
        labels += batch.labels
    if features is None or filled != count:
        raise AuditError(f"expected {count} images, read {filled}")
    return Streamed(features, metas, labels, shape, prepared)  # type: ignore[arg-type]
