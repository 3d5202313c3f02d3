"""The joint loop with diffusion producers (``generator.kind: diffusion``), under Accelerate.

METHOD.md, "The same two producers with diffusion". Sampling a diffusion model costs tens of UNet passes
per image, so instead of a generator step per encoder step, the producer refreshes a synthetic pool every
``diffusion.refresh_every`` epochs with the *current* encoder, writes it as a shard set in the run
directory and the encoder streams it in with the real data. Read top to bottom:

1. run directory, Accelerator, real data (in memory), encoder and views;
2. per epoch: for ``hsg.warmup_epochs`` plain SimCLR on real data; then, once, the conditions (k-means on
   the warmed-up encoder's features, or labels, or none) and stage 1, the conditional UNet
   (``training/diffusion_model.py``); the conditions stay fixed afterwards, since the UNet's class embedding
   is tied to them;
3. at every refresh: the main process samples ``diffusion.pool_size`` images (guided hard samples, and
   branched pairs with ``t_split`` scheduled over training), writes them as ``pools/epoch-EEEE`` (a shard
   set) and every process reads the set back through the safe reader;
4. per step: the real batch plus ``hsg.synthetic_ratio`` x as many pool images in one NT-Xent batch; a
   hard sample gives two views of itself, a pair gives one view of x_a and one of x_b (a hard positive);
5. kNN monitor and log; publish the encoder and conditions (``final/``) and the EMA UNet in diffusers'
   layout (``diffusion/``), for ``synthkit generate`` and ``synthkit eval``.

Not yet: checkpoints and ``--resume`` for diffusion runs (the run is refused rather than half-resumed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from synthkit.config import PipelineConfig, to_dict
from synthkit.data.sources import load_source
from synthkit.data.views import Views, to_float
from synthkit.encoders.model import Encoder
from synthkit.generators.diffusion import save_diffusion
from synthkit.producers.conditions import Conditions, num_conditions
from synthkit.producers.diffusion_pool import DiffusionProducer, Pool, Scorer, read_pool, write_pool
from synthkit.producers.diffusion_sampling import guidance_scale_at, t_split_at
from synthkit.producers.hard_samples import hsg_lambda
from synthkit.provenance import state_dict_hash
from synthkit.training.artifacts import save_final
from synthkit.training.batches import MemoryBatches
from synthkit.training.diffusion_model import train_unet
from synthkit.training.joint import (
    RunError,
    RunResult,
    _check_run_dir,
    _JsonlLog,
    _knn_monitor,
    _refresh_conditions,
    _trackers,
    _write_run_files,
)
from synthkit.training.steps import StepParts, plain_step

DIFFUSION_DIR = "diffusion"
POOLS_DIR = "pools"


def diffusion_meta_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / DIFFUSION_DIR / "diffusion.json"


def is_diffusion_run(run_dir: str | Path) -> bool:
    return diffusion_meta_path(run_dir).is_file()


def pool_split(cfg: PipelineConfig) -> tuple[int, int]:
    """(hard samples, pairs) in a pool of ``diffusion.pool_size`` images."""
    d = cfg.diffusion
    n_pairs = round(d.pool_size * d.pair_fraction / 2) if d.hpg else 0
    return d.pool_size - 2 * n_pairs, n_pairs


def reference_batch(cfg: PipelineConfig, real: torch.Tensor, seed: int) -> torch.Tensor:
    """The fixed, seeded batch of real images (floats in [0, 1]) that hardness is measured against."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(real), generator=g)[: min(cfg.train.batch_size, len(real))]
    return to_float(real[idx])


def _synthetic_batch(
    pool: Pool, n_hard: int, n_pairs: int, device: torch.device
) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
    """Draw (with the global generator) hard samples and pairs from the pool."""
    hard = pairs = None
    if n_hard and len(pool.hard):
        hard = to_float(pool.hard[torch.randint(len(pool.hard), (n_hard,))]).to(device)
    if n_pairs and len(pool.pair_a):
        i = torch.randint(len(pool.pair_a), (n_pairs,))
        pairs = (to_float(pool.pair_a[i]).to(device), to_float(pool.pair_b[i]).to(device))
    return hard, pairs


def train_diffusion_run(
    cfg: PipelineConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    accelerator: Accelerator | None = None,
) -> RunResult:
    """Train the encoder jointly with the diffusion producers; publish encoder and UNet in ``run_dir``."""
    # 1. Run directory, Accelerator, data, encoder ---
    run_dir = Path(run_dir)
    if resume:
        raise RunError("diffusion runs cannot be resumed yet; start a new run (another --out)")
    if cfg.mix.sources:
        raise RunError("a diffusion run trains on in-memory real data; mix.sources is for plain CL")
    _check_run_dir(cfg, run_dir, resume)
    accelerator = accelerator or Accelerator(
        mixed_precision=cfg.train.mixed_precision, log_with=_trackers() or None, project_dir=str(run_dir)
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.train.batch_size % world:
        raise RunError(f"train.batch_size={cfg.train.batch_size} is not divisible by {world} processes")
    real = load_source(cfg.data, "train")
    test = load_source(cfg.data, "test") if real.labels is not None and cfg.train.knn_every else None
    channels, size = real.images.shape[1], real.images.shape[-1]
    b_real = cfg.train.batch_size // world
    batches = MemoryBatches(real.images, b_real, rank, world, seed=cfg.train.seed)
    steps_per_epoch = len(batches)
    if steps_per_epoch == 0:
        raise RunError(f"the training data hold fewer images than one batch of {cfg.train.batch_size}")
    _write_run_files(
        accelerator,
        run_dir,
        cfg,
        {"name": real.name, "train_images": len(real), "channels": channels, "size": size},
        producer="diffusion",
    )
    accelerator.wait_for_everyone()
    log = _JsonlLog(accelerator, run_dir / "metrics.jsonl")
    set_seed(cfg.train.seed)
    encoder = Encoder(cfg.encoder, channels)
    if cfg.train.channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    views = Views(cfg.views, channels, size)
    opt = torch.optim.Adam(encoder.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    encoder_ddp, opt = accelerator.prepare(encoder, opt)
    parts = StepParts(accelerator, encoder_ddp, views, opt, cfg.objective.temperature)
    n_cond = num_conditions(cfg.conditions, len(real.classes) if real.classes else None)
    d = cfg.diffusion
    warm = min(cfg.hsg.warmup_epochs, cfg.train.epochs)
    b_syn = max(1, round(b_real * cfg.hsg.synthetic_ratio))
    pool_hard, pool_pairs = pool_split(cfg)
    n_pairs = min(b_syn // 2, round(b_syn * d.pair_fraction / 2)) if pool_pairs else 0
    n_hard = b_syn - 2 * n_pairs if pool_hard else 0
    reference = reference_batch(cfg, real.images, cfg.train.seed)
    device = accelerator.device
    state: dict[str, Any] = {"step": 0}
    producer: DiffusionProducer | None = None
    conditions: Conditions | None = None
    pool: Pool | None = None
    pools: list[dict[str, Any]] = []

    def unwrapped() -> Encoder:
        return accelerator.unwrap_model(encoder_ddp)

    def stage1() -> DiffusionProducer:
        # conditions from the warmed-up encoder, then the UNet on real data (every process)
        cond = _refresh_conditions(cfg, accelerator, unwrapped(), real, None, warm, n_cond)
        unet, scheduler, last = train_unet(
            d,
            accelerator,
            real.images,
            cond.labels if n_cond else None,
            n_cond,
            seed=cfg.train.seed,
            log=lambda rec, _s: log({"stage": "diffusion", **rec}, state["step"]),
            log_every=cfg.train.log_every,
            progress=progress,
        )
        log({"stage": "diffusion", "diffusion_final_loss": last}, state["step"])
        torch.manual_seed(cfg.train.seed * 1009 + 7919 * (rank + 1) + 1)
        return DiffusionProducer(unet.to(device), dict(scheduler.config), cond, d, step=d.train_steps)

    # 2-4. Epochs ---
    torch.manual_seed(cfg.train.seed * 1009 + 7919 * (rank + 1))
    for epoch in range(cfg.train.epochs):
        if epoch >= warm and producer is None:
            producer = stage1()
            conditions = producer.conditions
        if producer is not None and (epoch - warm) % d.refresh_every == 0:
            progress_frac = (epoch - warm) / max(1, cfg.train.epochs - 1 - warm)
            scale = guidance_scale_at(d, hsg_lambda(cfg.hsg, epoch + 1))
            t_split = t_split_at(d, progress_frac)
            pool_dir = run_dir / POOLS_DIR / f"epoch-{epoch:04d}"
            if accelerator.is_main_process:
                enc = unwrapped()
                was = enc.training
                enc.eval()
                scorer = Scorer(enc, views, reference.to(device), cfg.objective.temperature)
                res = write_pool(
                    pool_dir,
                    "pool",
                    producer,
                    scorer,
                    n_hard=pool_hard,
                    n_pairs=pool_pairs,
                    seed=cfg.train.seed * 100_003 + epoch,
                    guidance_scale=scale,
                    t_split=t_split,
                    maxcount=max(1, d.pool_size // max(1, world)),
                    manifest_fields={"config": to_dict(cfg), "producer": {"name": "diffusion-pool"}},
                )
                enc.train(was)
                rec = {"epoch": epoch, "pool_guidance_scale": scale, "pool_t_split": t_split}
                if res.hardness:
                    rec["pool_hardness"] = sum(res.hardness) / len(res.hardness)
                if res.pair_similarity:
                    rec["pool_pair_similarity"] = sum(res.pair_similarity) / len(res.pair_similarity)
                pools.append(rec)
                log(rec, state["step"])
            accelerator.wait_for_everyone()
            pool = read_pool(pool_dir)
        encoder_ddp.train()
        sums: dict[str, float] = {}
        bar = tqdm(
            batches.epoch(epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
            disable=not (progress and accelerator.is_main_process),
            leave=False,
        )
        for _, images in bar:
            x_real = to_float(images).to(device)
            hard = pairs = None
            if pool is not None:
                hard, pairs = _synthetic_batch(pool, n_hard, n_pairs, device)
            # the same encoder step as the GAN path: pairs are positive groups of four views
            rec = plain_step(parts, x_real, hard, pairs)
            state["step"] += 1
            for k, v in rec.items():
                sums[k] = sums.get(k, 0.0) + v
            if state["step"] % cfg.train.log_every == 0:
                log({"epoch": epoch, **rec}, state["step"])
        bar.close()
        epoch_rec: dict[str, Any] = {
            "epoch": epoch + 1,
            **{f"epoch_{k}": v / steps_per_epoch for k, v in sums.items()},
        }
        if test is not None and ((epoch + 1) % cfg.train.knn_every == 0 or epoch + 1 == cfg.train.epochs):
            if accelerator.is_main_process:
                epoch_rec["knn_acc"] = _knn_monitor(cfg, unwrapped(), real, test, device)
            accelerator.wait_for_everyone()
        log(epoch_rec, state["step"])
        if accelerator.is_main_process and progress:
            shown = {k: round(v, 4) for k, v in epoch_rec.items() if isinstance(v, float)}
            tqdm.write(f"epoch {epoch + 1}/{cfg.train.epochs} {shown}")
    if producer is None:  # all epochs were warm-up: the UNet is still trained, so the run can generate
        producer = stage1()
        conditions = producer.conditions

    # 5. Publish: the UNet in diffusers' layout first, then final/ (whose presence means the run is done) ---
    summary: dict[str, Any] = {}
    fingerprint = torch.stack([p.detach().double().sum() for p in encoder_ddp.parameters()]).sum()
    in_sync = bool((accelerator.gather(fingerprint.reshape(1).to(device)) == fingerprint).all())
    if accelerator.is_main_process:
        unet = producer.unet.cpu()
        diff_dir = run_dir / DIFFUSION_DIR
        save_diffusion(unet, DDPMScheduler.from_config(producer.scheduler_config), diff_dir)
        unet_hash = state_dict_hash({k: v.detach().contiguous() for k, v in unet.state_dict().items()})
        diffusion_meta_path(run_dir).write_text(
            json.dumps(
                {
                    "unet_ema": unet_hash,
                    "train_steps": d.train_steps,
                    "num_classes": producer.num_classes,
                    "condition_source": conditions.source if conditions else "none",
                    "pools": pools,
                },
                indent=2,
                sort_keys=True,
            )
        )
        hashes = save_final(
            run_dir, cfg, unwrapped(), None, conditions, epochs=cfg.train.epochs, steps=state["step"]
        )
        summary = {
            "epochs": cfg.train.epochs,
            "steps": state["step"],
            "num_processes": world,
            "weights_in_sync": in_sync,
            "hashes": {**hashes, "unet_ema": unet_hash},
            "pools": pools,
        }
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        epoch_lines = [r for r in lines if "epoch_loss_cl" in r]
        if epoch_lines:
            summary["last_epoch"] = epoch_lines[-1]
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return RunResult(run_dir, summary)
