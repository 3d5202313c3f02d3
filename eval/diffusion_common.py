"""Loading a diffusion run's producer and scorer for the eval scripts (not part of the package API)."""

from __future__ import annotations

from pathlib import Path

from synthkit.data.sources import load_source
from synthkit.data.views import Views
from synthkit.objectives.scoring import Scorer, reference_batch
from synthkit.run_files.final import RunArtifacts, load_final
from synthkit.samplers.diffusion import DiffusionSampler


def load_run(run: Path, seed: int = 0) -> tuple[RunArtifacts, DiffusionSampler, Scorer]:
    """The run's final encoder (eval mode), its EMA UNet (verified), a scorer with a seeded reference."""
    art = load_final(run)
    producer = art.sampler
    if not isinstance(producer, DiffusionSampler):
        raise SystemExit(f"{run} is not a diffusion run (its producer is {art.producer_kind})")
    cfg = art.cfg
    real = load_source(cfg.data, "train")
    views = Views(cfg.views, real.images.shape[1], real.images.shape[-1])
    reference = reference_batch(real.images, cfg.train.batch_size, seed)
    return art, producer, Scorer(art.encoder, views, art.objective, reference, seed=seed)
