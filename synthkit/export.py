"""``synthkit generate``: a finished run's synthetic samples as a shard set, for every producer.

One path for every producer: the run records its producer kind and the hash of every weight file,
``load_final`` verifies them and loads the run's frozen sampler (``samplers/``), which makes chunks of
samples on request. ``kind``
picks what is written: ``hard`` (HSG's samples), ``pair`` (HPG's positive pairs: samples ``pair_a`` and
``pair_b`` sharing a ``pair_id``, with their pair similarity) or ``all`` (both: the pairs first, whose
metadata has every field a hard sample's has, so that a reader that infers a schema from the first few
samples, as Hugging Face ``datasets`` does from five, sees every field; ``shards/README.md``).
``n`` is the number of *samples* per kind, for every producer: ``--n 10 --kind pair`` writes 5 pairs.

Every sample records its hardness under the run's encoder and objective (``objectives/scoring.py``: its
loss in a chunk of ``export.batch_size`` samples next to a fixed, seeded reference batch of real training
images, pairs as positive groups), and every pair member the cosine similarity of the pair's backbone
features. The reference batch's views and projections are computed once per export (per process), from
the seed, and reused for every chunk. Chunks are made by the producer from a generator seeded by (seed,
kind, first index) alone, and their views from (seed, first index), so the same run, request and seed give
byte-identical shards.

An export killed at any point (even SIGKILL) resumes when the same command is run again: the writer's journal
says which shards are complete and intact, chunks before them are skipped, the chunk holding the first missing
sample is recomputed whole (its hardness depends on the whole chunk) and only the missing samples are written.
The result is byte-identical to an uninterrupted run; the per-sample results of the kept shards are read back
from them, not regenerated. ``preview.png`` (a grid, one row per condition) is published before the manifest,
so a set with a manifest always has its preview. Chunks become shards in ``samplers/write.py``
(:func:`~synthkit.samplers.write.write_samples`), through which the diffusion trainer writes its training
pools too, so a pool the encoder trained on and an exported set have one format.

Several processes. Under ``accelerate launch`` (W processes) the set is split by global sample index into W
parts of whole shards (``shards.writer.Part``): process r makes the chunks that hold part r's samples (a
chunk that straddles two parts is made by both, whole, so its hardness is the same) and writes part r's
shards with its own journal; once every process has, the main process verifies the parts and publishes the
set (``shards/parts.py``; the preview from the shards, then the manifest). Shard k holds samples
``k * maxcount ..`` whoever writes it, so the set is byte-identical to a one-process export at any process
count (with the same number of threads per process: float results depend on it), and a rerun after a kill
of any process resumes every part from its journal. ``generate(part=(I, N))`` (``--part I/N``) writes one
part alone, for schedulers without Accelerate; :func:`publish` (``synthkit shards publish``) publishes the
parts once all are written. Exports compute on the CPU, as a one-process export does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from synthkit.atomic import check_output_dir, save_image_atomic, write_json_atomic
from synthkit.config import GenerateConfig, from_dict, to_dict
from synthkit.data.batches import REFERENCE_EPOCH, MixBatches, sample_images
from synthkit.data.sources import load_source
from synthkit.data.views import Views
from synthkit.errors import ExportError, SynthkitError
from synthkit.images import Panel, labelled_grid
from synthkit.objectives.scoring import Scorer, reference_batch
from synthkit.progress import Phase
from synthkit.provenance import created_by
from synthkit.run_files.final import RunArtifacts, load_final
from synthkit.samplers.write import Previews, SetEvents, SetPlan, WriteResult, read_back, write_samples
from synthkit.shards import (
    ShardSetExistsError,
    read_manifest,
)
from synthkit.shards.format import is_safe_name, shard_pattern, temp_name
from synthkit.shards.location import is_url
from synthkit.shards.output import SetOutput, lock_part, open_output
from synthkit.shards.parts import find_part_journals, publish_parts
from synthkit.shards.writer import Part, journal_name

if TYPE_CHECKING:
    from PIL import Image

    from synthkit.samplers.base import Sampler

__all__ = ["ExportError", "ExportResult", "generate"]

logger = logging.getLogger(__name__)

IN_PROGRESS = ".export-in-progress.json"
STAGE_NAMES = {"hard": "hsg", "pair": "hpg", "all": "hsg-hpg"}
PREVIEW = "preview.png"
# the preview grid draws from the samples of the chunks that start before this index
PREVIEW_SAMPLES = 400
PREVIEW_PER_ROW = 10  # samples of each kind a row of the preview shows (pairs: 5 pairs)
PREVIEW_REAL = 4  # real images at the head of a row
HARDNESS_DEFINITION = (
    "the run's contrastive loss per sample (mean over its two views; pairs as one positive group of four "
    "views), next to a seeded reference batch of real training images whose two views are drawn and encoded "
    "once per export (not per chunk), encoder in eval mode"
)
PAIR_SIMILARITY_DEFINITION = "cosine of backbone features h(x_a), h(x_b), encoder in eval mode"


@dataclass
class ExportResult:
    """A finished export; ``hardness`` and ``conditions`` (-1: none) are per sample, as written to the shards.

    ``resumed_from`` is the number of samples an interrupted earlier attempt had already made durable.
    """

    out_dir: Path
    manifest: dict[str, Any]
    hardness: np.ndarray
    conditions: np.ndarray
    reused: bool = False
    resumed_from: int = 0
    main: bool = True  # False on the other processes of a launch (the main process reports)
    part: dict[str, Any] | None = None  # one part written alone: its record (no manifest yet)


def training_images(cfg: Any, n: int) -> torch.Tensor:
    """Real training images (uint8) to draw a reference batch of ``n`` from: the in-memory source, or a
    bounded sample of the run's shard sets when it trained on a stream (``mix.sources``)."""
    if not cfg.mix.sources:
        return load_source(cfg.data, "train").images
    stream = MixBatches(cfg.mix, min(n, 64), 0, 1, cfg.train.seed)
    return sample_images(stream, 4 * n, REFERENCE_EPOCH)


def _check_disk(out_dir: Path, total: int, art: Any) -> None:
    """Refuse up front a set that cannot fit on the disk, from what the request declares: ``total`` samples
    of the run's image size (a PNG is at most about its raw size, plus the tar member headers and JSON)."""
    import shutil

    data = art.cfg.data
    channels = art.encoder.in_channels
    per_sample = channels * data.size * data.size + 3 * 512 + 1024
    need = total * per_sample
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if need > free:
        raise ExportError(
            f"--n asks for {total} samples, up to {need / 2**30:.3g} GiB of shards, but {out_dir} has "
            f"{free / 2**30:.3g} GiB free"
        )


def _request(
    hashes: dict[str, str], n: int, seed: int, name: str, batch_size: int, maxcount: int, kind: str
) -> dict:
    """What identifies an export: the same request on the same weights gives the same bytes."""
    return {
        "run_hashes": hashes,
        "n": n,
        "seed": seed,
        "name": name,
        "batch_size": batch_size,
        "maxcount": maxcount,
        "kind": kind,
    }


def default_set_name(kind: str, producer_kind: str, request: dict) -> str:
    """``STAGE-PRODUCER-DIGEST-train``: a name (and key prefix) of this export's own.

    The digest is of the request (the run's weight hashes, n, seed, kind, batch size, maxcount), so two
    exports of different runs or seeds never share shard file names or sample keys, while the same request
    gets the same name (and the same bytes). ``-train`` names the split: Hugging Face's
    ``load_dataset("webdataset", data_dir=SET)`` takes only the files whose names hold a split word when
    there are any, so the set's JSON and PNG files are not opened as tars.
    """
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode("utf-8")).hexdigest()[:8]
    producer = re.sub(r"[^A-Za-z0-9]+", "-", producer_kind).strip("-")[:32] or "producer"
    return f"{STAGE_NAMES[kind]}-{producer}-{digest}-train"


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def prepare_out_dir(out_dir: Path, name: str, request: dict) -> dict | None:
    """Reuse a finished identical set (return its manifest), let our own interrupted attempt resume, refuse
    anything else.

    The in-progress marker (the request, written before the writer starts) says an unfinished directory is
    ours; the writer's journal then says which of its shards are complete. Our marker without a journal (an
    attempt from before journals existed) leaves shards nothing can vouch for, so they are deleted.
    """
    manifest = read_manifest(out_dir) if out_dir.is_dir() else None
    if manifest is not None:
        return _reuse_published(out_dir, name, manifest, request)
    _refuse_split_export(out_dir, name)
    marker = out_dir / IN_PROGRESS
    ours = _read_marker(marker) == request
    _clear_unfinished(out_dir, name, ours)
    out_dir.mkdir(parents=True, exist_ok=True)
    for temp in (temp_name(IN_PROGRESS), temp_name(PREVIEW)):  # left by a kill mid-write
        (out_dir / temp).unlink(missing_ok=True)
    if not ours:
        write_json_atomic(marker, request)
    return None


def _reuse_published(out_dir: Path, name: str, manifest: dict, request: dict) -> dict:
    """A published set is reused when this very request made it (what a kill after its publication left
    beside it is deleted); any other set there is refused."""
    if manifest.get("request") != request:
        raise ShardSetExistsError(
            f"{out_dir} already holds a different shard set ({manifest.get('name')!r}, "
            f"{manifest.get('total')} samples); choose another --out or delete it"
        )
    parts = [p for _, _, p in find_part_journals(out_dir, name).get(name, [])]
    for p in (out_dir / journal_name(name), out_dir / IN_PROGRESS, *parts):
        with contextlib.suppress(OSError):
            p.unlink(missing_ok=True)
    return manifest


def _refuse_split_export(out_dir: Path, name: str) -> None:
    """An export interrupted while split into parts is finished by as many parts, not by one process."""
    split = {n for _, n, _ in find_part_journals(out_dir, name).get(name, [])}
    if split:
        raise ShardSetExistsError(
            f"{out_dir} holds an interrupted export split into {min(split)} parts; finish it with "
            f"{min(split)} processes (or --part I/{min(split)}), or delete it"
        )


def _clear_unfinished(out_dir: Path, name: str, ours: bool) -> None:
    """Unpublished shards are refused unless our own marker is there; ours without a journal (an attempt
    from before journals existed) are deleted, as nothing can vouch for them; with a journal they stay for
    the writer to resume from."""
    journal = out_dir / journal_name(name)
    leftovers = (
        [p for p in out_dir.glob("*.tar") if shard_pattern(name).fullmatch(p.name)]
        if out_dir.is_dir()
        else []
    )
    if (leftovers or journal.exists()) and not ours:
        raise ShardSetExistsError(
            f"{out_dir} holds shards without a manifest that this export did not start "
            f"({len(leftovers)} files); choose another --out or delete them"
        )
    if leftovers and not journal.exists():
        for p in leftovers:
            p.unlink()


def _launch() -> tuple[int, int]:
    """(this process, processes) under ``accelerate launch`` (or torchrun); (0, 1) otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # CPU processes (ACCELERATE_USE_CPU=1, gloo) must say so, or PartialState sees no distributed launch
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.num_processes <= 1:
        raise ExportError(
            f"launched as {os.environ['WORLD_SIZE']} processes, but accelerate set up none: launch with "
            "`accelerate launch --multi_gpu` (on CPUs with ACCELERATE_USE_CPU=1)"
        )
    return state.process_index, state.num_processes


def prepare_part_dir(out_dir: Path, name: str, request: dict, part: Part, n_shards: int) -> dict | None:
    """Like :func:`prepare_out_dir`, for one part of a set written in parts: reuse a finished identical set
    (return its manifest), refuse a directory a part writer cannot resume.

    Every part runs this, possibly at the same moment, so it only reads, and makes the directory; a part's
    own writer then checks its own shards (another request's journal, shards without a journal).
    """
    manifest = read_manifest(out_dir) if out_dir.is_dir() else None
    if manifest is not None:
        if manifest.get("request") == request:
            with contextlib.suppress(OSError):  # left by a kill after the parts were published
                (out_dir / journal_name(name, part)).unlink(missing_ok=True)
            return manifest
        raise ShardSetExistsError(
            f"{out_dir} already holds a different shard set ({manifest.get('name')!r}, "
            f"{manifest.get('total')} samples); choose another --out or delete it"
        )
    if (out_dir / journal_name(name)).exists():
        raise ShardSetExistsError(
            f"{out_dir} holds an interrupted export written by one process; finish it the same way (one "
            "process, no --part) or delete it"
        )
    other = {n for _, n, _ in find_part_journals(out_dir, name).get(name, [])} - {part.count}
    if other:
        raise ShardSetExistsError(
            f"{out_dir} holds an interrupted export split into {min(other)} parts; finish it with "
            f"{min(other)} processes (or --part I/{min(other)}), or delete it"
        )
    pattern = shard_pattern(name)
    beyond = (
        [
            p.name
            for p in out_dir.iterdir()
            if pattern.fullmatch(p.name) and int(p.stem.rsplit("-", 1)[1]) >= n_shards
        ]
        if out_dir.is_dir()
        else []
    )
    if beyond:
        raise ShardSetExistsError(
            f"{out_dir} holds shards this export does not write ({', '.join(sorted(beyond)[:3])}); choose "
            "another --out or delete them"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    return None


def publish(out_dir: str | Path) -> ExportResult:
    """Publish an export written in parts (``generate(part=...)`` or one per process): the parts are
    verified (``shards/parts.py``), the per-sample results read back from the shards (the safe reader,
    keys and latent ids checked), the preview written, then the manifest, as a one-process export does.

    ``synthkit shards publish DIR`` calls this; under ``accelerate launch`` the main process does once every
    process has written its part. A set that is published already is returned as ``reused``.
    """
    out_dir = Path(out_dir)
    res = WriteResult({})
    published_now: list[bool] = []

    def before(fields: dict[str, Any], shards: list[dict[str, Any]]) -> None:
        published_now.append(True)
        request = fields.get("request")
        if not isinstance(request, dict):  # parts of a set that is not an export: nothing to add
            return
        counts = {k: request["n"] for k in ("hard", "pair") if request["kind"] in (k, "all")}
        spans = _preview_spans(counts, request["batch_size"])
        read_back(out_dir, shards, request["name"], request["seed"], spans, res)
        producer = fields.get("producer") or {}
        conditions = None  # the run is not on this machine: a plain row of real images
        with contextlib.suppress(SynthkitError, KeyError, TypeError, OSError):
            # the run's conditions label its real images, as in a one-process export's preview
            conditions = load_final(producer["run_dir"]).conditions
        real_by_condition, real_row = _real_for_preview(from_dict(fields["config"]), conditions)
        source = str(producer.get("condition_source", ""))
        grid = preview_grid(res, counts, request["name"], source, real_by_condition, real_row)
        save_image_atomic(out_dir / PREVIEW, grid)

    manifest = publish_parts(out_dir, before_publish=before)
    (out_dir / IN_PROGRESS).unlink(missing_ok=True)
    conds = np.array(res.conditions, dtype=np.int64)
    return ExportResult(out_dir, manifest, np.array(res.hardness), conds, reused=not published_now)


def _preview_count(total: int, batch_size: int) -> int:
    return min(total, math.ceil(PREVIEW_SAMPLES / batch_size) * batch_size)


def _preview_spans(counts: dict[str, int], batch_size: int) -> tuple[range, ...]:
    """The samples the preview draws from: the first chunks of each kind (pairs come first in the set)."""
    n_pair, n_hard = counts.get("pair", 0), counts.get("hard", 0)
    return (
        range(_preview_count(n_pair, batch_size)),
        range(n_pair, n_pair + _preview_count(n_hard, batch_size)),
    )


def _real_for_preview(cfg: Any, conditions: Any) -> tuple[dict[int, list[np.ndarray]], list[np.ndarray]]:
    """Real training images for the preview: per condition when the run's conditions label the in-memory
    training images one by one (k-means pseudo-classes, or true labels), else a plain row of them."""
    real = training_images(cfg, PREVIEW_PER_ROW)
    labels = getattr(conditions, "labels", None)
    if (
        labels is not None
        and getattr(conditions, "centroids", None) is None
        and getattr(conditions, "num_classes", 0)
        and len(labels) == len(real)
    ):
        by: dict[int, list[np.ndarray]] = {}
        for c in range(conditions.num_classes):
            picked = real[(labels == c).nonzero().flatten()[:PREVIEW_REAL]]
            by[c] = list(picked.permute(0, 2, 3, 1).numpy())
        return by, []
    return {}, list(real[:PREVIEW_REAL].permute(0, 2, 3, 1).numpy())


def preview_grid(
    res: WriteResult,
    counts: dict[str, int],
    name: str,
    source: str,
    real_by_condition: dict[int, list[np.ndarray]],
    real_row: list[np.ndarray],
) -> Image.Image:
    """The set's ``preview.png``: one row per condition, labelled; real training images of that condition
    at the left (or one row of real images on top, when the run's conditions do not label them), then the
    hard samples and the pairs (a and b side by side, marked), each kind in its own panel."""
    n_pair = counts.get("pair", 0)
    cells: dict[tuple[str, int], list[np.ndarray]] = {}
    for index, image in zip(res.preview_index, res.previews, strict=True):
        kind = "pair" if index < n_pair else "hard"
        cell = cells.setdefault((kind, res.conditions[index]), [])
        if len(cell) < PREVIEW_PER_ROW - (kind == "pair" and PREVIEW_PER_ROW % 2):
            cell.append(image)
    kinds = [k for k in ("hard", "pair") if any(key[0] == k for key in cells)]
    panels = [Panel("real images" if real_row else "real, this condition", PREVIEW_REAL)] + [
        Panel("hard samples", PREVIEW_PER_ROW)
        if k == "hard"
        else Panel("positive pairs, a | b", PREVIEW_PER_ROW, pairs=True)
        for k in kinds
    ]
    word = {"kmeans": "pseudo-class", "labels": "class", "model": "class id"}.get(source, "condition")
    rows: list[tuple[str, list[list[np.ndarray]]]] = []
    if real_row:
        rows.append(("real", [real_row]))
    for c in sorted({key[1] for key in cells}):
        label = "no condition" if c < 0 else f"{word} {c}"
        rows.append((label, [real_by_condition.get(c, []), *[cells.get((k, c), []) for k in kinds]]))
    what = {"kmeans": "k-means pseudo-classes of the run's encoder", "labels": "true labels"}.get(
        source, "the run's conditions" if source not in ("none", "") else "no conditions"
    )
    caption = f"{name}: one row per condition ({what})"
    return labelled_grid(rows, panels, caption=caption)[0]


def _parse_part(part: tuple[int, int] | None, rank: int, world: int) -> Part | tuple[int, int] | None:
    """The part this process writes (None: the whole set): ``--part`` (checked by GenerateConfig), or the
    launch's."""
    if part is not None and world > 1:
        raise ExportError(
            "--part is for jobs started on their own (array jobs); under accelerate launch every process "
            "writes its own part of the set already"
        )
    index, count = part if part is not None else (rank, world)
    return None if count == 1 else (index, count)


@dataclass(frozen=True)
class _Request:
    """One export's settings, checked: what it writes (``counts``), how, and its identity (``record``)."""

    kind: str
    n: int
    seed: int
    name: str
    maxcount: int
    batch_size: int
    record: dict[str, Any]

    @property
    def counts(self) -> dict[str, int]:
        return {k: self.n for k in ("hard", "pair") if self.kind in (k, "all")}

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@torch.no_grad()
def generate(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    n: int | None = None,
    seed: int | None = None,
    name: str | None = None,
    maxcount: int | None = None,
    batch_size: int | None = None,
    kind: str | None = None,
    progress: bool = True,
    part: tuple[int, int] | None = None,
) -> ExportResult:
    """Write ``n`` samples of each requested ``kind`` of the run in ``run_dir`` as a shard set in ``out_dir``.

    ``kind``: ``hard``, ``pair`` or ``all``; by default everything the run's sampler makes (``all`` for an
    HSG+HPG run). The same request again is a no-op on a finished set and a resume on an interrupted one
    (the module docstring says how); a directory holding anything else is refused with ShardSetExistsError.

    Under ``accelerate launch`` (W processes) process r writes part r of W of the set and the main process
    publishes it once all have; ``part=(I, N)`` writes part I of N alone and publishes nothing (``publish``
    does, once every part is written). Either way the set is byte-identical to a one-process export.
    The arguments build a :class:`synthkit.config.GenerateConfig`: a value out of range is a ConfigError
    naming its flag (``--maxcount must be a positive integer, got 0``) before the run is read.
    """
    # 1. The request, checked; the run, verified, and what its sampler can make ---
    asked = GenerateConfig(
        n=n, seed=seed, maxcount=maxcount, batch_size=batch_size, name=name, kind=kind, part=part
    )
    art = load_final(run_dir)
    kind = _kind(art, run_dir, asked.kind)
    req = _settings(art, kind, asked.over(art.cfg.export))
    rank, world = _launch()
    split = _parse_part(asked.part, rank, world)
    out_dir = _check_destination(out_dir, art, req, split)
    if split is not None:
        return _generate_split(Path(out_dir), art, req, split, rank, world, progress)
    output = open_output(out_dir)  # a URL is written through a local staging directory (shards/output.py)
    try:
        return _generate(art, output, req, progress)
    except BaseException:
        output.abandon()
        raise
    finally:
        output.finish()


def _kind(art: RunArtifacts, run_dir: str | Path, kind: str | None) -> str:
    """The requested kind, checked against what the run's sampler makes (default: everything)."""
    have = art.sampler.export_kinds if art.sampler is not None else ()
    if not have:
        raise ExportError(
            f"{run_dir} was trained without HSG and HPG (hsg.enabled=false, hpg.enabled=false): it has no "
            "generator to sample"
        )
    kind = kind or ("all" if len(have) == 2 else have[0])
    missing = [k for k in ("hard", "pair") if kind in (k, "all") and k not in have]
    if missing:
        why = {"hard": "HSG (hsg.enabled=false)", "pair": "HPG (hpg.enabled=false)"}
        raise ExportError(
            f"{run_dir} was trained without {why[missing[0]]}: it has no {missing[0]} generator"
        )
    return kind


def _settings(art: RunArtifacts, kind: str, s: GenerateConfig) -> _Request:
    """The request: the flags over the run's ``export`` section (``s``, checked as it was built), the set's
    name and its identity."""
    seed = s.seed
    if kind in ("pair", "all") and s.n % 2:
        raise ExportError(f"--n must be even for pairs (two samples per pair), got {s.n}")
    settings = (s.n, seed, s.batch_size, s.maxcount, kind)
    name = s.name
    if name is None:
        assert art.sampler is not None
        name = default_set_name(
            kind, art.sampler.kind, _request(art.hashes, settings[0], seed, "", *settings[2:])
        )
    if not is_safe_name(name):
        raise ExportError(f"--name {name!r} must be letters, digits, '_', '-' or '.', not hidden")
    record = _request(art.hashes, s.n, seed, name, s.batch_size, s.maxcount, kind)
    return _Request(kind, s.n, seed, name, s.maxcount, s.batch_size, record)


def _check_destination(
    out_dir: str | Path, art: RunArtifacts, req: _Request, split: tuple[int, int] | None
) -> str | Path:
    """``out_dir`` checked (not a system or run directory, room for the whole set) before work starts."""
    if not is_url(str(out_dir)):
        out_dir = check_output_dir(out_dir, create=False)
        _check_disk(out_dir, req.total, art)  # the whole set: on a shared disk every part lands on it
        return out_dir
    if split is not None:
        raise ExportError(
            "a set written in parts (several processes, or --part) needs a directory every part can "
            f"reach (a shared filesystem), not a URL ({out_dir}); write it to such a directory and copy "
            "it, or export with one process"
        )
    _check_disk(Path(tempfile.gettempdir()), req.total, art)  # written through a local staging directory
    return out_dir


def _generate_split(
    out_dir: Path,
    art: RunArtifacts,
    req: _Request,
    split: tuple[int, int],
    rank: int,
    world: int,
    progress: bool,
) -> ExportResult:
    """Part ``split`` of the set, under its part lock (one writer per part: shards/output.py)."""
    mine = Part.of(req.total, req.maxcount, *split)
    part_lock = lock_part(out_dir, *split, world=world)
    try:
        manifest = prepare_part_dir(out_dir, req.name, req.record, mine, -(-req.total // req.maxcount))
        if manifest is not None:
            return ExportResult(out_dir, manifest, np.array([]), np.array([]), reused=True, main=rank == 0)
        scorer, plan = _export_setup(art, req)
        assert art.sampler is not None
        return _generate_part(out_dir, art.sampler, scorer, plan, mine, world, progress)
    finally:
        part_lock.release()


def _export_setup(art: RunArtifacts, req: _Request, previews: Previews = 0) -> tuple[Scorer, SetPlan]:
    """The scorer (the run's encoder and objective, and the one reference batch) and the set's plan with
    the manifest fields: the same for a whole export and for each of its parts."""
    cfg, sampler, run_dir = art.cfg, art.sampler, art.run_dir
    assert sampler is not None
    real = training_images(cfg, cfg.train.batch_size)
    channels, size = real.shape[1], real.shape[-1]
    scorer = Scorer(
        art.encoder,
        Views(cfg.views, channels, size),
        art.objective,
        reference_batch(real, cfg.train.batch_size, req.seed),
        seed=req.seed,
    )
    names = {"hard": "hsg", "pair": "hpg", "all": "hsg+hpg"}
    fields = {
        "config": to_dict(cfg),
        "producer": {
            "name": f"{names[req.kind]}-{sampler.kind}",
            "kind": req.kind,
            "generator": sampler.kind,
            "run_dir": str(Path(run_dir).resolve()),
            "hashes": art.hashes,
            "epochs": art.meta.get("epochs"),
            "objective": art.objective.describe(),
            "hardness": HARDNESS_DEFINITION,
            "pair_similarity": PAIR_SIMILARITY_DEFINITION,
            **sampler.export_info(),
        },
        "created_by": created_by(),
        "seed": req.seed,
        "request": req.record,
    }
    plan = SetPlan(req.name, req.counts, req.seed, req.batch_size, req.maxcount, fields, previews)
    return scorer, plan


class _ExportEvents(SetEvents):
    """A whole export's progress bar, its preview (published before the manifest) and its uploads."""

    def __init__(self, art: RunArtifacts, output: SetOutput, plan: SetPlan, bar: Phase) -> None:
        self.art, self.output, self.plan, self.bar = art, output, plan, bar

    def made(self, n: int) -> None:
        self.bar.update(n)

    def before_publish(self, res: WriteResult) -> None:
        sampler = self.art.sampler
        assert sampler is not None
        real_by_condition, real_row = _real_for_preview(self.art.cfg, sampler.conditions)
        source = str(sampler.export_info().get("condition_source", ""))
        grid = preview_grid(res, self.plan.counts, self.plan.name, source, real_by_condition, real_row)
        save_image_atomic(self.output.local / PREVIEW, grid)
        self.output.publish(PREVIEW)  # before the manifest: a published set always has its preview

    def published(self, name: str) -> None:
        self.output.publish(name)


class _Progress(SetEvents):
    def __init__(self, bar: Phase) -> None:
        self.bar = bar

    def made(self, n: int) -> None:
        self.bar.update(n)


def _generate(art: RunArtifacts, output: SetOutput, req: _Request, progress: bool) -> ExportResult:
    out_dir = output.local
    if output.url is not None:
        manifest = output.published_manifest()
        if manifest is not None and manifest.get("request") != req.record:
            raise ShardSetExistsError(
                f"{output.url} already holds a different shard set ({manifest.get('name')!r}); choose "
                "another --out or delete it"
            )
    else:
        manifest = prepare_out_dir(out_dir, req.name, req.record)
    if manifest is not None:
        return ExportResult(Path(output.where), manifest, np.array([]), np.array([]), reused=True)
    if output.url is not None:
        prepare_out_dir(out_dir, req.name, req.record)

    # 2. The scorer: the run's encoder and objective, and the one reference batch ---
    scorer, plan = _export_setup(art, req, previews=_preview_spans(req.counts, req.batch_size))

    # 3. Chunks -> shards; the preview before the manifest ---
    what = " and ".join(
        f"{n} {'pair samples' if k == 'pair' else 'hard samples'}" for k, n in req.counts.items()
    )
    bar = Phase("generate", req.total, "img", progress=progress, logger=logger, detail=f" ({what})").start()
    assert art.sampler is not None
    res = write_samples(out_dir, plan, art.sampler, scorer, events=_ExportEvents(art, output, plan, bar))
    if res.hardness:
        bar.result(samples=len(res.hardness), hardness_mean=float(np.mean(res.hardness)))
    bar.close()
    (out_dir / IN_PROGRESS).unlink(missing_ok=True)
    conds = np.array(res.conditions, dtype=np.int64)
    return ExportResult(
        Path(output.where), res.manifest, np.array(res.hardness), conds, resumed_from=res.resumed_from
    )


def _generate_part(
    out_dir: Path,
    sampler: Sampler,
    scorer: Scorer,
    plan: SetPlan,
    part: Part,
    world: int,
    progress: bool,
) -> ExportResult:
    """Part ``part`` of the set; under a launch (``world`` > 1), then the publication by the main process.

    Every process reaches the two collectives (the parts' outcomes, then the publication's), whatever failed
    where, so that one process's error ends every process with it instead of leaving them waiting.
    """
    main = part.index == 0
    samples = part.samples(plan.total, plan.maxcount)
    desc = f"generate part {part.index}/{part.count}"
    bar = Phase(desc, len(samples), "img", progress=progress, logger=logger, main=main or world == 1).start()
    failure: SynthkitError | None = None
    res = WriteResult({})
    try:
        res = write_samples(out_dir, plan, sampler, scorer, part=part, events=_Progress(bar))
    except SynthkitError as exc:
        if world == 1:
            raise
        failure = exc
    if failure is None:
        bar.close()
    else:
        bar.bar.close()
    conds = np.array(res.conditions, dtype=np.int64)
    if world == 1:  # one job of an array: the part alone, published later by `synthkit shards publish`
        return ExportResult(
            out_dir, {}, np.array(res.hardness), conds, resumed_from=res.resumed_from, part=res.manifest
        )
    return _publish_together(out_dir, res, conds, failure, main)


def _publish_together(
    out_dir: Path, res: WriteResult, conds: np.ndarray, failure: SynthkitError | None, main: bool
) -> ExportResult:
    """The parts' outcomes gathered, the set published by the main process when every part is whole, and
    its manifest (or why there is none) broadcast: every process takes part in both collectives, and each
    raises when any part or the publication failed."""
    from accelerate.utils import broadcast_object_list, gather_object

    outcomes = gather_object([(None if failure is None else str(failure), res.resumed_from)])
    failed = [f"process {r}: {msg}" for r, (msg, _) in enumerate(outcomes) if msg is not None]
    result, published, publish_error = _publish_if_whole(out_dir, main and not failed)
    broadcast_object_list(published, from_process=0)
    if publish_error is not None:
        raise publish_error
    if failure is not None:
        raise failure
    if failed or published[1] is not None:
        raise ExportError(
            f"{out_dir}: not published: " + ("; ".join(failed) if failed else str(published[1]))
        )
    resumed = sum(r for _, r in outcomes)
    if result is not None:
        result.resumed_from = resumed
        return result
    return ExportResult(
        out_dir, published[0], np.array(res.hardness), conds, resumed_from=resumed, main=False
    )


def _publish_if_whole(
    out_dir: Path, publish_here: bool
) -> tuple[ExportResult | None, list[Any], SynthkitError | None]:
    """Publish the set here (the main process, every part whole): (the result, ``[manifest, why not]`` to
    broadcast, the publication's error); elsewhere nothing is published: ``(None, [None, None], None)``."""
    if not publish_here:
        return None, [None, None], None
    try:
        result = publish(out_dir)
    except SynthkitError as exc:
        return None, [None, str(exc)], exc
    return result, [result.manifest, None], None
