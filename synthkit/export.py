"""``synthkit generate``: export a trained run's hard samples as a shard set.

Samples come from the run's EMA generator; conditions are drawn from the run's final condition
frequencies. Each sample records its hardness under the run's encoder: its NT-Xent loss (mean over its
two views as anchors) in a batch of ``export.batch_size`` generated images together with a fixed,
seeded reference batch of ``train.batch_size`` real training images, mirroring the composition of a
training step; the encoder is in eval mode. Everything is seeded, so the same run, N and seed give
byte-identical shards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from synthkit.config import to_dict
from synthkit.data.sources import load_source
from synthkit.data.views import Views, to_float
from synthkit.losses.nt_xent import nt_xent_per_view, per_sample_hardness
from synthkit.provenance import created_by
from synthkit.shards import ShardSetExistsError, ShardSetWriter, read_manifest
from synthkit.shards.format import shard_pattern
from synthkit.training.artifacts import FinalArtifacts, load_final

IN_PROGRESS = ".export-in-progress.json"
PRODUCER = "hsg-cgan"


class ExportError(RuntimeError):
    """The export cannot run as asked (no generator in the run, a different set in the way, ...)."""


@dataclass
class ExportResult:
    out_dir: Path
    manifest: dict[str, Any]
    hardness: np.ndarray
    conditions: np.ndarray
    reused: bool = False


def _request(art: FinalArtifacts, n: int, seed: int, name: str, batch_size: int, maxcount: int) -> dict:
    """What identifies an export: the same request on the same weights gives the same bytes."""
    return {
        "run_hashes": art.meta["hashes"],
        "n": n,
        "seed": seed,
        "name": name,
        "batch_size": batch_size,
        "maxcount": maxcount,
        "kind": "hard",
    }


def _prepare_out_dir(out_dir: Path, name: str, request: dict) -> ExportResult | None:
    """Reuse a finished identical set, clear our own interrupted attempt, refuse anything else."""
    manifest = read_manifest(out_dir) if out_dir.is_dir() else None
    if manifest is not None:
        if manifest.get("request") == request:
            return ExportResult(out_dir, manifest, np.array([]), np.array([]), reused=True)
        raise ShardSetExistsError(
            f"{out_dir} already holds a different shard set ({manifest.get('name')!r}, "
            f"{manifest.get('total')} samples); choose another --out or delete it"
        )
    marker = out_dir / IN_PROGRESS
    leftovers = (
        [p for p in out_dir.glob("*.tar") if shard_pattern(name).fullmatch(p.name)]
        if out_dir.is_dir()
        else []
    )
    if leftovers:
        try:
            ours = json.loads(marker.read_text()) == request
        except (OSError, json.JSONDecodeError):
            ours = False
        if not ours:
            raise ShardSetExistsError(
                f"{out_dir} holds shards without a manifest that this export did not start "
                f"({len(leftovers)} files); choose another --out or delete them"
            )
        for p in leftovers:  # an interrupted attempt of this same export: start it again
            p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(request, sort_keys=True))
    return None


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
    progress: bool = True,
) -> ExportResult:
    """Write ``n`` hard samples of the run in ``run_dir`` as a shard set in ``out_dir``."""
    art = load_final(run_dir)
    cfg = art.cfg
    if art.generator is None:
        raise ExportError(
            f"{run_dir} was trained without HSG (hsg.enabled=false): it has no generator to sample"
        )
    n = cfg.export.n if n is None else n
    seed = cfg.export.seed if seed is None else seed
    name = name or cfg.export.name
    maxcount = maxcount or cfg.export.maxcount
    batch_size = batch_size or cfg.export.batch_size
    if n < 1:
        raise ExportError(f"--n must be >= 1, got {n}")
    out_dir = Path(out_dir)
    request = _request(art, n, seed, name, batch_size, maxcount)
    reused = _prepare_out_dir(out_dir, name, request)
    if reused is not None:
        return reused

    gen, enc, cond = art.generator, art.encoder, art.conditions
    channels, size = gen.channels, gen.size
    views = Views(cfg.views, channels, size)
    g = torch.Generator().manual_seed(seed)
    real = load_source(cfg.data, "train")
    ref_idx = torch.randperm(len(real), generator=g)[: min(cfg.train.batch_size, len(real))]
    reference = to_float(real.images[ref_idx])
    producer_info = {
        "name": PRODUCER,
        "run_dir": str(Path(run_dir).resolve()),
        "hashes": art.meta["hashes"],
        "generator_step": art.meta.get("steps"),
        "epochs": art.meta.get("epochs"),
        "condition_source": cond.source if cond else "none",
        "hardness": "NT-Xent per sample, encoder eval mode",
    }
    fields = {
        "config": to_dict(cfg),
        "producer": producer_info,
        "created_by": created_by(),
        "seed": seed,
        "request": request,
    }
    all_hard, all_cond = [], []
    previews: list[np.ndarray] = []
    with ShardSetWriter(out_dir, name, maxcount=maxcount, manifest_fields=fields) as writer:
        bar = tqdm(total=n, desc="generate", disable=not progress, unit="img")
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            z = torch.randn(m, gen.z_dim, generator=g)
            c = cond.sample(m, generator=g) if cond is not None and cond.num_classes else None
            images = gen(z, c)
            torch.manual_seed(seed * 1_000_003 + start)  # the views' randomness, per chunk
            v1, v2 = views.two_views(torch.cat([reference, images]))
            per_view = nt_xent_per_view(enc(v1), enc(v2), temperature=cfg.objective.temperature)
            hardness = per_sample_hardness(per_view)[len(reference) :]
            arrays = _to_uint8(images)
            c_list = c.tolist() if c is not None else [None] * m
            for j in range(m):
                latent = start + j
                meta = {
                    "kind": "hard",
                    "producer": PRODUCER,
                    "generator_step": int(art.meta.get("steps", 0)),
                    "seed": seed,
                    "latent_id": latent,
                    "condition": c_list[j],
                    "condition_source": cond.source if cond else "none",
                    "condition_k": cond.num_classes if cond and cond.source == "kmeans" else None,
                    "hardness": round(float(hardness[j]), 6),
                }
                writer.write(f"{name}_{latent:08d}", arrays[j], meta)
            all_hard.append(hardness.numpy())
            all_cond.append(np.array([-1 if x is None else x for x in c_list]))
            if sum(len(p) for p in previews) < 400:
                previews.append(arrays)
            bar.update(m)
        bar.close()
        manifest = writer.close()
    (out_dir / IN_PROGRESS).unlink(missing_ok=True)
    conds = np.concatenate(all_cond)
    condition_grid(np.concatenate(previews), conds[: sum(len(p) for p in previews)]).save(
        out_dir / "preview.png"
    )
    return ExportResult(out_dir, manifest, np.concatenate(all_hard), conds)
