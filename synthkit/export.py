"""``synthkit generate``: export a trained run's hard samples and hard positive pairs as a shard set.

``kind`` picks what is written: ``hard`` (the HSG generator's samples), ``pair`` (G_a/G_b pairs: samples
``pair_a`` and ``pair_b`` sharing a ``pair_id``, with their backbone similarity under the run's encoder) or
``all`` (N hard samples, then N pair samples). Samples come from the run's EMA generators; conditions are
drawn from the run's final condition frequencies. Each sample records its hardness under the run's
encoder: its contrastive loss (mean over its two views as anchors; a pair's four views are one positive
group) in a batch of ``export.batch_size`` generated images together with a fixed, seeded reference batch
of ``train.batch_size`` real training images, mirroring the composition of a training step; the encoder
is in eval mode. Everything is seeded, so the same run, N and seed give
byte-identical shards.

An export killed at any point (even SIGKILL) resumes when the same command is run again: the writer's journal
says which shards are complete and intact, the seeded draws of the samples before them are replayed without
running the generator, the chunk holding the first missing sample is recomputed whole (its hardness depends
on the whole chunk) and only the missing samples are written. The result is byte-identical to an
uninterrupted run; the per-sample results of the kept shards are read back from them, not regenerated.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from synthkit.config import to_dict
from synthkit.data.sources import load_source
from synthkit.data.views import Views, to_float
from synthkit.losses.multi_positive import multi_positive_nt_xent_per_view
from synthkit.losses.nt_xent import nt_xent_per_view, per_sample_hardness
from synthkit.provenance import created_by
from synthkit.shards import (
    ShardSetExistsError,
    ShardSetWriter,
    decode_sample,
    iter_shard_members,
    read_manifest,
)
from synthkit.shards.format import shard_pattern, temp_name
from synthkit.shards.writer import journal_name, write_json_atomic
from synthkit.training.artifacts import FinalArtifacts, load_final

IN_PROGRESS = ".export-in-progress.json"
PRODUCER = "hsg-cgan"
PAIR_PRODUCER = "hpg-cgan"
KINDS = ("hard", "pair", "all")
PREVIEW = "preview.png"
# the preview grid draws from the samples of the chunks that start before this index
PREVIEW_SAMPLES = 400


class ExportError(RuntimeError):
    """The export cannot run as asked (no generator in the run, a different set in the way, ...)."""


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


def _request(
    art: FinalArtifacts, n: int, seed: int, name: str, batch_size: int, maxcount: int, kind: str = "hard"
) -> dict:
    """What identifies an export: the same request on the same weights gives the same bytes."""
    return {
        "run_hashes": art.meta["hashes"],
        "n": n,
        "seed": seed,
        "name": name,
        "batch_size": batch_size,
        "maxcount": maxcount,
        "kind": kind,
    }


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def _prepare_out_dir(out_dir: Path, name: str, request: dict) -> ExportResult | None:
    """Reuse a finished identical set, let our own interrupted attempt resume, refuse anything else.

    The in-progress marker (the request, written before the writer starts) says an unfinished directory is
    ours; the writer's journal then says which of its shards are complete. Our marker without a journal (an
    attempt from before journals existed) leaves shards nothing can vouch for, so they are deleted.
    """
    manifest = read_manifest(out_dir) if out_dir.is_dir() else None
    marker, journal = out_dir / IN_PROGRESS, out_dir / journal_name(name)
    if manifest is not None:
        if manifest.get("request") == request:
            for p in (journal, marker):  # a kill after the manifest was published can leave these
                with contextlib.suppress(OSError):
                    p.unlink(missing_ok=True)
            return ExportResult(out_dir, manifest, np.array([]), np.array([]), reused=True)
        raise ShardSetExistsError(
            f"{out_dir} already holds a different shard set ({manifest.get('name')!r}, "
            f"{manifest.get('total')} samples); choose another --out or delete it"
        )
    leftovers = (
        [p for p in out_dir.glob("*.tar") if shard_pattern(name).fullmatch(p.name)]
        if out_dir.is_dir()
        else []
    )
    ours = _read_marker(marker) == request
    if (leftovers or journal.exists()) and not ours:
        raise ShardSetExistsError(
            f"{out_dir} holds shards without a manifest that this export did not start "
            f"({len(leftovers)} files); choose another --out or delete them"
        )
    if leftovers and not journal.exists():
        for p in leftovers:
            p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    for temp in (temp_name(IN_PROGRESS), temp_name(PREVIEW)):  # left by a kill mid-write
        (out_dir / temp).unlink(missing_ok=True)
    if not ours:
        write_json_atomic(marker, request)
    return None


def _read_back(
    out_dir: Path, shards: list[dict[str, Any]], name: str, seed: int, previews: int
) -> tuple[list[float], list[int], list[np.ndarray]]:
    """Per-sample hardness, condition (-1: none) and the first ``previews`` images of the kept shards.

    Read with the safe reader (tar structure and member names checked, nothing unpickled) rather than
    regenerated; only the preview's images are decoded, since PNG decoding is half the cost of reading back.
    Keys and latent ids are checked so that a shard which is intact but not this export's cannot slip in.
    """
    hardness: list[float] = []
    conditions: list[int] = []
    images: list[np.ndarray] = []
    for shard in shards:
        path = out_dir / shard["name"]
        for key, parts in iter_shard_members(path):
            i = len(hardness)
            if i < previews:
                sample = decode_sample(str(path), key, parts)
                meta = sample["meta"]
                images.append(sample["image"])
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
            hardness.append(float(meta["hardness"]))
            conditions.append(-1 if meta.get("condition") is None else int(meta["condition"]))
    return hardness, conditions, images


def _save_atomic(image: Image.Image, path: Path) -> None:
    """Save a PNG under a temp name and rename it, so a kill never leaves half an image under ``path``."""
    temp = path.with_name(temp_name(path.name))
    try:
        image.save(temp, format="PNG")
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """N x C x H x W floats in [0, 1] -> N x H x W x C uint8."""
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def condition_grid(
    images: np.ndarray, conditions: np.ndarray, per_row: int = 10, scale: int = 2
) -> Image.Image:
    """A PNG-ready grid: one row per condition, up to ``per_row`` samples each (deterministic, PIL only)."""
    conds = sorted(set(conditions.tolist()))
    h, w, c = images.shape[1:]
    grid = np.full(((h + 2) * len(conds), (w + 2) * per_row, c), 255, dtype=np.uint8)
    for r, cond in enumerate(conds):
        for j, i in enumerate(np.flatnonzero(conditions == cond)[:per_row]):
            grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, j * (w + 2) + 1 : j * (w + 2) + 1 + w] = images[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def _segments(kind: str, n: int, batch_size: int) -> list[tuple[str, int, int, int]]:
    """(kind, first global index, chunk start within the segment, chunk size) of every chunk, in order."""
    out: list[tuple[str, int, int, int]] = []
    offset = 0
    for seg in ("hard", "pair"):
        if kind not in (seg, "all"):
            continue
        bs = batch_size if seg == "hard" else max(2, batch_size - batch_size % 2)
        out += [(seg, offset, start, min(bs, n - start)) for start in range(0, n, bs)]
        offset += n
    return out


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
) -> ExportResult:
    """Write ``n`` samples of each requested ``kind`` of the run in ``run_dir`` as a shard set in ``out_dir``.

    ``kind``: ``hard``, ``pair`` or ``all``; by default everything the run has (``all`` for an HSG+HPG run).
    The same request again is a no-op on a finished set and a resume on an interrupted one (the module
    docstring says how); a directory holding anything else is refused with ShardSetExistsError.
    A diffusion run (``generator.kind: diffusion``) is exported by ``synthkit.export_diffusion`` with the
    same ``kind`` choices.
    """
    from synthkit.training.diffusion_joint import is_diffusion_run

    if is_diffusion_run(run_dir):
        from synthkit.export_diffusion import generate_diffusion

        return generate_diffusion(
            run_dir, out_dir, n=n, seed=seed, name=name, maxcount=maxcount, batch_size=batch_size,
            kind=kind, progress=progress,
        )  # fmt: skip
    art = load_final(run_dir)
    cfg = art.cfg
    have = [
        k for k, ok in (("hard", art.generator is not None), ("pair", art.pair_generators is not None)) if ok
    ]
    if not have:
        raise ExportError(
            f"{run_dir} was trained without HSG and HPG (hsg.enabled=false, hpg.enabled=false): it has no "
            "generator to sample"
        )
    kind = kind or ("all" if len(have) == 2 else have[0])
    if kind not in KINDS:
        raise ExportError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    missing = [k for k in ("hard", "pair") if kind in (k, "all") and k not in have]
    if missing:
        why = {"hard": "HSG (hsg.enabled=false)", "pair": "HPG (hpg.enabled=false)"}
        raise ExportError(
            f"{run_dir} was trained without {why[missing[0]]}: it has no {missing[0]} generator"
        )
    n = cfg.export.n if n is None else n
    seed = cfg.export.seed if seed is None else seed
    name = name or cfg.export.name
    maxcount = maxcount or cfg.export.maxcount
    batch_size = batch_size or cfg.export.batch_size
    if n < 1:
        raise ExportError(f"--n must be >= 1, got {n}")
    if kind in ("pair", "all") and n % 2:
        raise ExportError(f"--n must be even for pairs (two samples per pair), got {n}")
    out_dir = Path(out_dir)
    request = _request(art, n, seed, name, batch_size, maxcount, kind)
    reused = _prepare_out_dir(out_dir, name, request)
    if reused is not None:
        return reused

    enc, cond = art.encoder, art.conditions
    some_gen = art.generator if art.generator is not None else art.pair_generators[0]  # type: ignore[index]
    channels, size, z_dim = some_gen.channels, some_gen.size, some_gen.z_dim
    views = Views(cfg.views, channels, size)
    g = torch.Generator().manual_seed(seed)
    real = load_source(cfg.data, "train")
    ref_idx = torch.randperm(len(real), generator=g)[: min(cfg.train.batch_size, len(real))]
    reference = to_float(real.images[ref_idx])
    producer_name = {"hard": PRODUCER, "pair": PAIR_PRODUCER, "all": "hsg+hpg-cgan"}[kind]
    producer_info = {
        "name": producer_name,
        "kind": kind,
        "run_dir": str(Path(run_dir).resolve()),
        "hashes": art.meta["hashes"],
        "generator_step": art.meta.get("generator_steps", art.meta.get("steps")),
        "epochs": art.meta.get("epochs"),
        "condition_source": cond.source if cond else "none",
        "hardness": "contrastive loss per sample (pairs as one positive group), encoder eval mode",
        "pair_similarity": "cosine of backbone features h(x_a), h(x_b), encoder eval mode",
    }
    fields = {
        "config": to_dict(cfg),
        "producer": producer_info,
        "created_by": created_by(),
        "seed": seed,
        "request": request,
    }
    total = n * (2 if kind == "all" else 1)
    preview_n = min(total, math.ceil(PREVIEW_SAMPLES / batch_size) * batch_size)
    step = int(art.meta.get("generator_steps", art.meta.get("steps", 0)))
    with ShardSetWriter(out_dir, name, maxcount=maxcount, manifest_fields=fields, resume=True) as writer:
        done = writer.resume_from
        all_hard, all_cond, previews = _read_back(out_dir, writer.completed_shards, name, seed, preview_n)
        if len(all_hard) != done:  # the journal's counts and the shards' content disagree
            raise ExportError(f"{out_dir}: the kept shards hold {len(all_hard)} samples, expected {done}")
        bar = tqdm(total=total, initial=done, desc="generate", disable=not progress, unit="img")
        for seg, offset, start, m in _segments(kind, n, batch_size):
            first = offset + start  # global index of the chunk's first sample
            k = m if seg == "hard" else m // 2
            z = torch.randn(k, z_dim, generator=g)
            c = cond.sample(k, generator=g) if cond is not None and cond.num_classes else None
            if first + m <= done:  # durable already: only its draws are replayed, to keep g in step
                continue
            similarity = None
            if seg == "hard":
                images = art.generator(z, c)  # type: ignore[misc]
                groups = None
                c_list = c.tolist() if c is not None else [None] * m
            else:
                gen_a, gen_b = art.pair_generators  # type: ignore[misc]
                x_a, x_b = gen_a(z, c), gen_b(z, c)
                images = torch.stack([x_a, x_b], dim=1).flatten(0, 1)  # a0, b0, a1, b1, ...
                similarity = F.cosine_similarity(enc.features(x_a), enc.features(x_b), dim=1)
                groups = torch.arange(k).repeat_interleave(2) + len(reference)
                c_list = [v for v in (c.tolist() if c is not None else [None] * k) for _ in (0, 1)]
            torch.manual_seed(seed * 1_000_003 + first)  # the views' randomness, per chunk
            v1, v2 = views.two_views(torch.cat([reference, images]))
            if groups is None:
                per_view = nt_xent_per_view(enc(v1), enc(v2), temperature=cfg.objective.temperature)
            else:
                ids = torch.cat([torch.arange(len(reference)), groups])
                per_view = multi_positive_nt_xent_per_view(
                    enc(torch.cat([v1, v2])), torch.cat([ids, ids]), cfg.objective.temperature
                )
            hardness = per_sample_hardness(per_view)[len(reference) :]
            arrays = _to_uint8(images)
            for j in range(max(0, done - first), m):  # the chunk's first samples may be durable already
                latent = first + j
                meta = {
                    "kind": "hard" if seg == "hard" else ("pair_a", "pair_b")[j % 2],
                    "producer": PRODUCER if seg == "hard" else PAIR_PRODUCER,
                    "generator_step": step,
                    "seed": seed,
                    "latent_id": latent,
                    "condition": c_list[j],
                    "condition_source": cond.source if cond else "none",
                    "condition_k": cond.num_classes if cond and cond.source == "kmeans" else None,
                    "hardness": round(float(hardness[j]), 6),
                }
                if similarity is not None:
                    meta["pair_id"] = (start + j) // 2
                    meta["pair_similarity"] = round(float(similarity[j // 2]), 6)
                writer.write(f"{name}_{latent:08d}", arrays[j], meta)
                all_hard.append(meta["hardness"])
                all_cond.append(-1 if c_list[j] is None else c_list[j])
                if latent < preview_n:
                    previews.append(arrays[j])
            bar.update(m - max(0, done - first))
        bar.close()
        conds = np.array(all_cond, dtype=np.int64)
        # before the manifest: a rerun after a kill between the two finds a finished set and does nothing
        _save_atomic(condition_grid(np.stack(previews), conds[:preview_n]), out_dir / PREVIEW)
        manifest = writer.close()
    (out_dir / IN_PROGRESS).unlink(missing_ok=True)
    return ExportResult(out_dir, manifest, np.array(all_hard), conds, resumed_from=done)
