"""Loading a diffusion run's producer and scorer for the eval scripts (not part of the package API)."""

from __future__ import annotations

import json
from pathlib import Path

from synthkit.data.sources import load_source
from synthkit.data.views import Views
from synthkit.generators.diffusion import load_diffusion
from synthkit.producers.diffusion_pool import DiffusionProducer, Scorer
from synthkit.training.artifacts import FinalArtifacts, load_final
from synthkit.training.diffusion_joint import DIFFUSION_DIR, diffusion_meta_path, reference_batch


def load_run(run: Path, seed: int = 0) -> tuple[FinalArtifacts, DiffusionProducer, Scorer]:
    """The run's final encoder (fixed, eval mode), its EMA UNet, a scorer with a seeded reference batch."""
    art = load_final(run)
    cfg = art.cfg
    meta = json.loads(diffusion_meta_path(run).read_text())
    unet, scheduler = load_diffusion(run / DIFFUSION_DIR)
    producer = DiffusionProducer(
        unet, dict(scheduler.config), art.conditions, cfg.diffusion, meta["train_steps"]
    )
    real = load_source(cfg.data, "train")
    views = Views(cfg.views, real.images.shape[1], real.images.shape[-1])
    scorer = Scorer(art.encoder, views, reference_batch(cfg, real.images, seed), cfg.objective.temperature)
    return art, producer, scorer
