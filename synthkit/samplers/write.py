"""Samples of a sampler, scored and written as one shard set: the format of exports and training pools.

:func:`write_samples` asks a sampler (``samplers/base.py``) for chunks, scores each chunk under a run's
encoder and objective (``objectives/scoring.py``) and writes its samples through the shard writer,
resuming from the writer's journal: chunks before the first missing sample are skipped, the chunk holding
it is recomputed whole (its hardness depends on the whole chunk) and only the missing samples are written,
so an interrupted set ends byte-identical to an uninterrupted one. ``synthkit generate`` (``export.py``)
writes exports with it and the diffusion trainer its pools (``producers/diffusion_pools.py``), so a pool the
encoder trained on and an exported set have one format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthkit.errors import ExportError
from synthkit.images import to_uint8
from synthkit.objectives.scoring import Scorer, pair_groups
from synthkit.samplers.base import Sampler
from synthkit.shards import ShardSetWriter, decode_sample, iter_shard_members
from synthkit.shards.writer import Part


@dataclass(frozen=True)
class ChunkPlan:
    kind: str  # "hard" or "pair"
    first: int  # global index of the chunk's first sample in the set
    start: int  # index of the first sample within its kind
    size: int


def plan_chunks(counts: dict[str, int], batch_size: int) -> list[ChunkPlan]:
    """Every chunk of a set of ``counts`` samples per kind (pairs first), ``batch_size`` samples each (pairs:
    an even number, so no pair is split)."""
    out: list[ChunkPlan] = []
    offset = 0
    for kind in ("pair", "hard"):
        n = counts.get(kind, 0)
        bs = batch_size if kind == "hard" else max(2, batch_size - batch_size % 2)
        out += [ChunkPlan(kind, offset + start, start, min(bs, n - start)) for start in range(0, n, bs)]
        offset += n
    return out


@dataclass
class WriteResult:
    manifest: dict[str, Any]
    hardness: list[float] = field(default_factory=list)
    conditions: list[int] = field(default_factory=list)
    pair_similarity: list[float] = field(default_factory=list)
    previews: list[np.ndarray] = field(default_factory=list)
    preview_index: list[int] = field(default_factory=list)  # the set index of each preview image
    resumed_from: int = 0


Previews = int | tuple[range, ...]


def _in_preview(i: int, previews: Previews) -> bool:
    """Whether sample ``i`` is drawn in the preview: one of the first ``previews`` (an int) or in a span."""
    return i < previews if isinstance(previews, int) else any(i in span for span in previews)


def read_back(
    out_dir: Path,
    shards: list[dict[str, Any]],
    name: str,
    seed: int,
    previews: Previews,
    res: WriteResult,
    first: int = 0,
) -> None:
    """Per-sample results and the first ``previews`` images of the kept shards, into ``res``.

    Read with the safe reader (tar structure and member names checked, nothing unpickled) rather than
    regenerated; only the preview's images are decoded. Keys and latent ids are checked so that a shard
    which is intact but not this export's cannot slip in. ``first`` is the global index of the first
    sample of ``shards`` (a part's).
    """
    for shard in shards:
        path = out_dir / shard["name"]
        for key, parts in iter_shard_members(path):
            i = first + len(res.hardness)
            if _in_preview(i, previews):
                sample = decode_sample(str(path), key, parts)
                meta = sample["meta"]
                res.previews.append(sample["image"])
                res.preview_index.append(i)
            else:
                try:
                    meta = json.loads(parts.get("json", b"").decode("utf-8"))
                except (UnicodeDecodeError, ValueError) as exc:
                    raise ExportError(f"{path}: sample {key!r}: unreadable metadata: {exc}") from exc
            if (
                key != f"{name}_{i:08d}"
                or not isinstance(meta, dict)
                or meta.get("latent_id") != i
                or meta.get("seed") != seed
                or not isinstance(meta.get("hardness"), (int, float))
            ):
                raise ExportError(
                    f"{path}: sample {key!r} is not sample {i} of this export; delete the directory to "
                    "start over"
                )
            res.hardness.append(float(meta["hardness"]))
            res.conditions.append(-1 if meta.get("condition") is None else int(meta["condition"]))
            if meta.get("kind") == "pair_a" and isinstance(meta.get("pair_similarity"), (int, float)):
                res.pair_similarity.append(float(meta["pair_similarity"]))


@dataclass(frozen=True)
class SetPlan:
    """What one shard set holds: ``counts[kind]`` samples of each kind (pairs first), made in chunks of
    ``batch_size`` from ``seed``, ``maxcount`` samples a shard, keys ``NAME_%08d``; ``previews``: which
    images to keep for a grid (the first ones, or spans of the set)."""

    name: str
    counts: dict[str, int]
    seed: int
    batch_size: int
    maxcount: int
    manifest_fields: dict[str, Any]
    previews: Previews = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class SetEvents:
    """What a caller of :func:`write_samples` hears while the set is written; every hook does nothing here."""

    def made(self, n: int) -> None:
        """``n`` more samples are written."""

    def before_publish(self, res: WriteResult) -> None:
        """After the last sample, before the manifest (e.g. a preview grid to publish first)."""

    def published(self, name: str) -> None:
        """The writer made file ``name`` durable (e.g. an upload of it)."""


def write_samples(
    out_dir: Path,
    plan: SetPlan,
    sampler: Sampler,
    scorer: Scorer,
    *,
    resume: bool = True,
    part: Part | None = None,
    events: SetEvents | None = None,
) -> WriteResult:
    """Make the samples ``plan`` asks for with ``sampler``, score them, and write one shard set.

    Keys are ``NAME_%08d`` in write order (pair members a, b, a, b, ..., then hard samples). With ``part``
    only that part's shards are written (its samples, from the chunks that hold them, whole: the same
    chunks, hence the same bytes, as one writer of the whole set), and nothing is published
    (``res.manifest`` is the part's record; ``shards/parts.py`` publishes the parts).
    """
    events = events or SetEvents()
    res = WriteResult({})
    step = sampler.export_info().get("generator_step")
    mine = part.samples(plan.total, plan.maxcount) if part is not None else range(plan.total)
    with ShardSetWriter(
        out_dir,
        plan.name,
        maxcount=plan.maxcount,
        manifest_fields=plan.manifest_fields,
        resume=resume,
        on_publish=events.published,
        part=part,
    ) as w:
        res.resumed_from = w.resume_from
        done = mine.start + w.resume_from
        read_back(out_dir, w.completed_shards, plan.name, plan.seed, plan.previews, res, first=mine.start)
        if len(res.hardness) != w.resume_from:  # the journal's counts and the shards' content disagree
            raise ExportError(
                f"{out_dir}: the kept shards hold {len(res.hardness)} samples, expected {w.resume_from}"
            )
        for chunk in plan_chunks(plan.counts, plan.batch_size):
            if chunk.first + chunk.size <= done or chunk.first >= mine.stop:  # durable already, or not ours
                continue
            todo = range(max(0, done - chunk.first), min(chunk.size, mine.stop - chunk.first))
            _write_chunk(w, plan, chunk, todo, sampler, scorer, step, res)
            events.made(len(todo))
        events.before_publish(res)
        res.manifest = w.close()
    return res


def _write_chunk(
    w: ShardSetWriter,
    plan: SetPlan,
    chunk: ChunkPlan,
    todo: range,
    sampler: Sampler,
    scorer: Scorer,
    step: Any,
    res: WriteResult,
) -> None:
    """Make ``chunk`` whole, score it, and write its samples ``todo`` (indices within the chunk)."""
    seed = plan.seed
    samples = sampler.make(chunk.kind, chunk.start, chunk.size, seed, scorer)
    images = samples.images.to(scorer.reference.device)
    pairs = chunk.kind == "pair"
    groups = pair_groups(chunk.size // 2) if pairs else None
    hardness = scorer.hardness(images, seed * 1_000_003 + chunk.first, groups).cpu()
    similarity = scorer.pair_similarity(images[0::2], images[1::2]).cpu() if pairs else None
    arrays = to_uint8(images)
    for j in todo:
        index = chunk.first + j
        meta = {
            "kind": ("pair_a", "pair_b")[j % 2] if pairs else "hard",
            "generator_step": step,
            "seed": seed,
            "latent_id": index,
            **samples.meta[j],
            "hardness": round(float(hardness[j]), 6),
        }
        if similarity is not None:
            meta["pair_similarity"] = round(float(similarity[j // 2]), 6)
            if j % 2 == 0:
                res.pair_similarity.append(meta["pair_similarity"])
        w.write(f"{plan.name}_{index:08d}", arrays[j], meta)
        res.hardness.append(meta["hardness"])
        cond = meta.get("condition")
        res.conditions.append(-1 if cond is None else int(cond))
        if _in_preview(index, plan.previews):
            res.previews.append(arrays[j])
            res.preview_index.append(index)
