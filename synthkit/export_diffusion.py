"""``synthkit generate`` for a diffusion run: guided hard samples and branched pairs as a shard set.

The run's EMA UNet (loaded with plain diffusers from ``RUN/diffusion``) samples with DDIM; hard samples are
guided by the run's final encoder at the final guidance scale, pairs branch at the final ``t_split``
(``diffusion.t_split_end``). ``kind``: ``hard`` writes ``n`` hard samples, ``pair`` ``n`` pairs (2n
images), ``all`` both. Each hard sample records its hardness (as in the GAN export: NT-Xent with a fixed
seeded reference batch of real images, encoder in eval mode), each pair member its ``pair_id``,
``pair_similarity`` (cosine of backbone features) and ``t_split``. Chunks are seeded on their own, so the
same run, request and seed give byte-identical shards, and an interrupted export resumes (the durable shards
are kept, the rest is resampled). Unlike the GAN export, ``preview.png`` is written just after the manifest.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from synthkit.config import to_dict
from synthkit.data.sources import load_source
from synthkit.data.views import Views
from synthkit.export import (
    IN_PROGRESS,
    KINDS,
    PREVIEW,
    PREVIEW_SAMPLES,
    ExportError,
    ExportResult,
    _prepare_out_dir,
    _save_atomic,
    condition_grid,
)
from synthkit.generators.diffusion import load_diffusion
from synthkit.producers.diffusion_pool import DiffusionProducer, Scorer, write_pool
from synthkit.producers.diffusion_sampling import guidance_scale_at
from synthkit.provenance import created_by
from synthkit.training.artifacts import load_final
from synthkit.training.diffusion_joint import DIFFUSION_DIR, diffusion_meta_path, reference_batch


def generate_diffusion(
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
    """Write a diffusion run's hard samples and/or pairs (``kind``) as a shard set in ``out_dir``."""
    from tqdm.auto import tqdm

    art = load_final(run_dir)
    cfg = art.cfg
    kind = kind or "all"
    if kind not in KINDS:
        raise ExportError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    n = cfg.export.n if n is None else n
    seed = cfg.export.seed if seed is None else seed
    name = name or cfg.export.name
    maxcount = maxcount or cfg.export.maxcount
    batch_size = batch_size or cfg.diffusion.sample_batch_size
    if n < 1:
        raise ExportError(f"--n must be >= 1, got {n}")
    meta = json.loads(diffusion_meta_path(run_dir).read_text())
    hashes = {**art.meta["hashes"], "unet_ema": meta["unet_ema"]}
    d = dataclasses.replace(cfg.diffusion, sample_batch_size=batch_size)
    scale = guidance_scale_at(d, cfg.hsg.lambda_hard) if cfg.hsg.enabled else 0.0
    request = {
        "run_hashes": hashes,
        "n": n,
        "seed": seed,
        "name": name,
        "batch_size": batch_size,
        "maxcount": maxcount,
        "kind": kind,
        "guidance_scale": scale,
        "t_split": d.t_split_end,
    }
    out_dir = Path(out_dir)
    reused = _prepare_out_dir(out_dir, name, request)
    if reused is not None:
        return reused
    unet, scheduler = load_diffusion(Path(run_dir) / DIFFUSION_DIR)
    producer = DiffusionProducer(unet, dict(scheduler.config), art.conditions, d, step=meta["train_steps"])
    real = load_source(cfg.data, "train")
    channels, size = real.images.shape[1], real.images.shape[-1]
    scorer = Scorer(
        art.encoder,
        Views(cfg.views, channels, size),
        reference_batch(cfg, real.images, seed),
        cfg.objective.temperature,
    )
    cond = art.conditions
    fields = {
        "config": to_dict(cfg),
        "producer": {
            "name": "diffusion",
            "run_dir": str(Path(run_dir).resolve()),
            "hashes": hashes,
            "generator_step": meta["train_steps"],
            "epochs": art.meta.get("epochs"),
            "condition_source": cond.source if cond else "none",
            "hardness": "NT-Xent per sample, encoder eval mode",
            "sampler": f"DDIM {d.ddim_steps} steps, eta {d.ddim_eta}",
            "guidance_scale": scale,
            "t_split": d.t_split_end,
            "branch_mode": d.branch_mode,
        },
        "created_by": created_by(),
        "seed": seed,
        "request": request,
    }
    n_hard = n if kind in ("hard", "all") else 0
    n_pairs = n if kind in ("pair", "all") else 0
    preview_n = min(n_hard + 2 * n_pairs, math.ceil(PREVIEW_SAMPLES / batch_size) * batch_size)
    bar = tqdm(total=n_hard + 2 * n_pairs, desc="generate", disable=not progress, unit="img")
    with torch.no_grad():
        res = write_pool(
            out_dir,
            name,
            producer,
            scorer,
            n_hard=n_hard,
            n_pairs=n_pairs,
            seed=seed,
            guidance_scale=scale,
            t_split=d.t_split_end,
            maxcount=maxcount,
            manifest_fields=fields,
            resume=True,
            previews=preview_n,
            progress=bar.update,
        )
    bar.close()
    conds = np.array(res.conditions, dtype=np.int64)
    if res.previews:
        grid = condition_grid(np.stack(res.previews), conds[: len(res.previews)])
        _save_atomic(grid, out_dir / PREVIEW)
    (out_dir / IN_PROGRESS).unlink(missing_ok=True)
    return ExportResult(out_dir, res.manifest, np.array(res.hardness), conds)
