"""The training loop: a contrastive encoder and, when the config asks for one, a producer, under Accelerate.

One loop for every producer (``producers/``: the cGAN's HSG and HPG, the diffusion pools, the naive
baseline, a third party's) and every objective (``objectives/``): it knows them only by their protocols.
Without a producer it is plain contrastive learning on the real data (``hsg.enabled=false``), or on a mix of
shard sets (``mix.sources``).

On W processes each holds ``train.batch_size / W`` real images of the global batch; the objective sees the
whole global batch (``training/steps.py``), and every logged number (``metrics.jsonl``, the trackers, the
summary) is reduced over processes: step records are means over processes (equal shares, so the global
mean), epoch times the slowest process's. Per epoch the loop logs its throughput: ``epoch_time_s`` (the
wall time of the epoch's steps, data loading included, epoch-start work and the monitor not),
``epoch_step_time_s`` (``epoch_time_s`` per step) and ``epoch_images_per_s`` (real training images of all
processes per second: ``train.batch_size * steps / epoch_time_s``; synthetic images ride along in the same
steps). Read top to bottom:

1. the run (directory, Accelerator, log, trackers, checkpoints: ``training/run.py``) and the real data;
2. encoder, views, objective and producer, all seeded alike on every process; prepared;
3. resume from the newest checkpoint when asked, then the producer's start (e.g. GAN pre-training);
4. per epoch: the producer's epoch work (conditions, pools), then per step the producer's contribution and
   one encoder step that carries it (``training/steps.py``), its records averaged over processes on the
   device and read once per ``train.log_every`` steps (``training/records.py``: a non-finite record stops
   the run at that read, naming the step it appeared at);
5. per epoch: throughput, monitor (kNN), log, checkpoint;
6. publish the final weights (encoder, objective, producer) and a summary.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm

from synthkit.config import PipelineConfig
from synthkit.data.batches import MemoryBatches, MixBatches, MixInfo, check_mix, drawn_record
from synthkit.data.sources import ImageSet, load_source
from synthkit.data.views import Views, to_float
from synthkit.determinism import deterministic_mode, strict_possible
from synthkit.distributed import FailTogether, reduce_values
from synthkit.encoders.model import Encoder, load_encoder_weights
from synthkit.errors import ConfigError, RunError
from synthkit.logs import epoch_line
from synthkit.objectives.base import Objective, build_objective
from synthkit.producers.base import NullProducer, Producer, StepInput, TrainContext
from synthkit.registry import PRODUCERS
from synthkit.shards.location import RemotePolicy
from synthkit.shards.location import configure as configure_remote
from synthkit.training.records import Read, StepRecords
from synthkit.training.run import Run, RunResult
from synthkit.training.state import LoopState
from synthkit.training.steps import EncoderStep

__all__ = ["WALL_CLOCK_KEYS", "RunError", "RunResult", "train"]

#: the per-epoch throughput fields: wall-clock measurements, so they differ between two runs of the same
#: config and seed (a test of determinism compares the log without them)
WALL_CLOCK_KEYS = ("epoch_time_s", "epoch_step_time_s", "epoch_images_per_s")

logger = logging.getLogger(__name__)


def _check_real_data(cfg: PipelineConfig) -> tuple[MixInfo | None, ImageSet | None, ImageSet | None]:
    """The training data, checked before the run directory exists: a mix's sets (readable, one image size
    and channel count, real sets only when a producer trains on them, see :func:`_refuse_synthetic_for`),
    and the in-memory real training images (the producer's and the monitor's) and labeled test split (the
    monitor's), which must match the mix's images."""
    info = check_mix(cfg.mix) if cfg.mix.sources else None
    if info is not None:
        _refuse_synthetic_for(cfg, info)
    real = load_source(cfg.data, "train") if info is None or cfg.train.knn_every else None
    test = (
        load_source(cfg.data, "test")
        if real is not None and real.labels is not None and cfg.train.knn_every
        else None
    )
    if (
        info is not None
        and real is not None
        and real.images.shape[1:] != (info.channels, info.size, info.size)
    ):
        raise RunError(
            f"the mix's images are {info.channels}x{info.size}x{info.size} but the monitor data "
            f"({cfg.data.name}) is {tuple(real.images.shape[1:])}; set --data.size/--data.channels to "
            "match, or --train.knn_every=0"
        )
    return info, real, test


def _refuse_synthetic_for(cfg: PipelineConfig, info: MixInfo) -> None:
    """A producer (HSG, HPG, a standalone generator) learns the real distribution from the mix: a set of
    synthetic samples there would silently become its "real" data. Refused, naming both ways out."""
    if not (cfg.producer_active and info.synthetic):
        return
    off = (["--generator.kind=cgan"] if cfg.generator.STANDALONE else []) + [
        f"--{section}.enabled=false" for section in ("hsg", "hpg") if getattr(cfg, section).enabled
    ]
    sets = ", ".join(f"{s.name} (kind {s.kind})" for s in info.synthetic)
    holds = "holds" if len(info.synthetic) == 1 else "hold"
    raise ConfigError(
        f"--data / mix.sources: {sets} {holds} synthetic samples, and the producer ({cfg.generator.kind}) "
        f"would train on every set of the mix as real data; for plain contrastive learning on the mix add "
        f"{' '.join(off)}, or keep the producer and give only real sets (kind real, from synthkit shards "
        "convert) to train it on streamed real data"
    )


def _real_batches(
    cfg: PipelineConfig, run: Run, info: MixInfo | None, real: ImageSet | None
) -> tuple[MemoryBatches | MixBatches, int, int]:
    """The batches a step trains on (in-memory real images, or a mix of shard sets), and the images'
    channels and size."""
    b_real = cfg.train.batch_size // run.world
    device = run.accelerator.device
    if info is not None:
        mix = MixBatches(
            cfg.mix, b_real, run.rank, run.world, cfg.train.seed, info=info, pin_memory=device.type == "cuda"
        )
        if run.is_main:
            logger.info("%s = %d steps", info.describe(), len(mix))
        return mix, mix.channels, mix.size
    assert real is not None
    batches = MemoryBatches(real.images, b_real, run.rank, run.world, seed=cfg.train.seed, device=device)
    return batches, real.images.shape[1], real.images.shape[-1]


def _checked(run: Run, records: StepRecords, state: LoopState) -> Read:
    """The records read from the device; a non-finite one stops the run (``training/records.py``: at most
    ``train.log_every`` steps after the step it appeared at, which the error names)."""
    read = records.read()
    if read.diverged is not None:
        key, value, step = read.diverged
        run.checkpoints.check_finite({key: value}, LoopState(epoch=state.epoch, step=step))
    return read


def _sync_batchnorm(encoder: Encoder, acc: Accelerator) -> Encoder:
    """The encoder with batch norm over the global batch (``train.sync_batchnorm``; SimCLR's global BN).

    torch's SyncBatchNorm synchronises through device kernels and refuses CPU tensors on more than one
    process ("SyncBatchNorm expected input tensor to be on GPU", torch 2.x): a clear error here instead.
    With one process batch norm already sees the whole batch, and SyncBatchNorm computes the same.
    """
    if acc.num_processes > 1 and acc.device.type == "cpu":
        raise RunError(
            f"train.sync_batchnorm=true needs GPUs: torch's SyncBatchNorm does not run on CPU processes "
            f"({acc.num_processes} here, gloo); set --train.sync_batchnorm=false (each process then "
            "normalises with its own share of the batch)"
        )
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(encoder)
    assert isinstance(converted, Encoder)
    return converted


def train(
    cfg: PipelineConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    accelerator: Accelerator | None = None,
) -> RunResult:
    """Train the encoder (with the configured producer) and publish its final weights in ``run_dir``.

    The training data are checked before the run directory is made. The run directory is locked for the
    whole run; ``--resume`` of a finished run returns its summary with ``already_finished`` set and changes
    nothing (``training/run_dir.py`` describes the directory's life). On several processes an error on any
    one ends them all, in bounded time, with the error printed once (:class:`FailTogether`). With
    ``train.deterministic`` the run's torch settings are deterministic (``synthkit/determinism.py``), set
    before anything touches CUDA and restored when it returns.
    """
    strict = strict_possible(cfg.producer_active)
    with deterministic_mode(cfg.train.deterministic, warn_only=not strict), FailTogether() as team:
        configure_remote(RemotePolicy(**dataclasses.asdict(cfg.remote)))  # retries of remote shard reads
        data = _check_real_data(cfg)  # before anything is written
        run = Run(cfg, Path(run_dir), resume=resume, accelerator=accelerator)
        team.watch()
        with run.guard():
            if run.finished is not None:
                return run.finished
            return _train(cfg, run, data, progress)


@dataclass
class _Models:
    """What the epochs work with: the prepared encoder and its optimizer, the views, the objective, the
    producer (a NullProducer without one) and the step that joins them."""

    encoder_ddp: Any
    encoder_info: dict[str, Any]
    objective: Objective
    producer: Producer
    step: EncoderStep


def _train(
    cfg: PipelineConfig,
    run: Run,
    data: tuple[MixInfo | None, ImageSet | None, ImageSet | None],
    progress: bool,
) -> RunResult:
    # 1. The run and its real data (checked before the run directory was made) ---
    info, real, test = data
    batches, channels, size = _real_batches(cfg, run, info, real)
    if len(batches) == 0:
        raise RunError(f"the training data hold fewer images than one batch of {cfg.train.batch_size}")

    # 2. Models: identical initial weights on every process ---
    m = _models(cfg, run, real, batches, channels, size, progress)

    # 3. Resume: the checkpoint is checked and loaded before anything in the run directory is written ---
    state = run.load_checkpoint(m.objective, m.producer) if run.resume_from is not None else LoopState()
    run.write_files(_data_record(cfg, real, batches, channels, size), m.producer.describe(), m.encoder_info)

    # then the producer's start ---
    if run.resume_from is None:  # distinct augmentations and latents per process; same weights (set above)
        torch.manual_seed(cfg.train.seed * 1009 + 7919 * (run.rank + 1))
    m.producer.start(resumed=run.resume_from is not None)

    # 4. Epochs: the producer's epoch work (conditions, pools), then the steps, then the epoch's end ---
    for epoch in range(state.epoch, cfg.train.epochs):
        m.producer.on_epoch_start(epoch)
        started = time.perf_counter()
        means, shown = _epoch_steps(cfg, run, m, batches, state, epoch, progress)
        _end_epoch(cfg, run, m, batches, state, means, shown, started, real, test)

    # 6. Publish the final weights and a summary ---
    m.producer.finish()
    summary = run.publish(m.encoder_ddp, m.objective, m.producer, state)
    return RunResult(run.dir, summary)


def _models(
    cfg: PipelineConfig,
    run: Run,
    real: ImageSet | None,
    batches: MemoryBatches | MixBatches,
    channels: int,
    size: int,
    progress: bool,
) -> _Models:
    """Encoder, views, objective, optimizer and producer, seeded alike on every process, prepared."""
    acc, device = run.accelerator, run.accelerator.device
    set_seed(cfg.train.seed)
    encoder = Encoder(cfg.encoder, channels, size)
    encoder_info: dict[str, Any] = {"backbone": cfg.encoder.backbone, "stem": encoder.stem}
    if cfg.encoder.weights is not None:  # a pretrained start, recorded by its content hash
        encoder_info.update(
            weights=cfg.encoder.weights, weights_hash=load_encoder_weights(encoder, cfg.encoder.weights)
        )
    if cfg.train.sync_batchnorm:
        encoder = _sync_batchnorm(encoder, acc)
    if cfg.train.channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    views = Views(cfg.views, channels, size)
    objective = build_objective(cfg.objective, encoder, cfg.encoder.proj_dim, cfg.train.seed).to(device)
    # fused: one kernel per step and no read of the step counters back to the host
    opt = torch.optim.Adam(
        encoder.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True
    )
    encoder_ddp, opt = acc.prepare(encoder, opt)
    ctx = TrainContext(
        cfg=cfg,
        accelerator=acc,
        channels=channels,
        size=size,
        real=real if cfg.mix.sources == () else None,
        batches=batches,
        views=views,
        objective=objective,
        run_dir=run.dir,
        encoder=lambda: acc.unwrap_model(encoder_ddp),
        log=run.logbook.log,
        progress=progress,
    )
    producer: Producer = NullProducer()
    if cfg.producer_active:  # built (and an init run checked) before anything is written
        producer = PRODUCERS.get(cfg.generator.kind).impl_class().for_training(cfg, ctx)
    producer.prepare(acc)
    step = EncoderStep(acc, encoder_ddp, views, opt, objective)
    return _Models(encoder_ddp, encoder_info, objective, producer, step)


def _data_record(
    cfg: PipelineConfig, real: ImageSet | None, batches: Any, channels: int, size: int
) -> dict[str, Any]:
    """``run.json``'s data entry."""
    in_memory = not cfg.mix.sources and real is not None
    return {
        "name": real.name if in_memory else "mix",  # type: ignore[union-attr]
        "train_images": len(real) if in_memory else batches.stream.epoch_samples,  # type: ignore[arg-type]
        "mix": list(cfg.mix.sources),
        "channels": channels,
        "size": size,
    }


def _epoch_steps(
    cfg: PipelineConfig,
    run: Run,
    m: _Models,
    batches: MemoryBatches | MixBatches,
    state: LoopState,
    epoch: int,
    progress: bool,
) -> tuple[dict[str, float], Any]:
    """One epoch's steps: per step the producer's contribution and the encoder's step, then its
    ``after_step``. Returns the epoch's mean records and its last contribution (the trackers' grid)."""
    acc, device = run.accelerator, run.accelerator.device
    steps_per_epoch = len(batches)
    m.encoder_ddp.train()
    records = StepRecords(device)  # the epoch's records, on the device until read
    shown = None  # the epoch's last contribution: the trackers' sample grid
    bar = tqdm(
        batches.epoch(epoch),
        total=steps_per_epoch,
        desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
        disable=not (progress and run.is_main),
        leave=False,
    )
    i = -1
    for i, (idx, images) in enumerate(bar):
        x_real = to_float(images.to(device, non_blocking=True))  # uint8 over, float on the device
        batch = StepInput(x_real, idx, epoch, epoch + i / steps_per_epoch)
        contribution = m.producer.contribute(batch)
        if i == steps_per_epoch - 1:
            shown = contribution
        # this process's records -> the global batch's, on the device (one all-reduce, no host read;
        # the producer's after_step, e.g. HPG's adaptive target, sees the same numbers on every process)
        state.step = run.logbook.step = state.step + 1
        rec = records.add(m.step(x_real, contribution), state.step)
        m.producer.after_step(rec)
        if cfg.train.record_indices:
            if isinstance(idx, list):  # streamed from shards: sample keys, gathered as objects
                state.seen_keys.append(gather_object([idx]))
            else:
                state.seen.append(acc.gather(idx.to(device)).view(run.world, -1).cpu())
        if state.step % cfg.train.log_every == 0:  # the one host read of these steps
            read = _checked(run, records, state)
            run.logbook.log({"epoch": epoch, **read.last}, namespace="train")
            bar.set_postfix(loss=f"{read.last.get('loss_cl', 0):.3f}")
    bar.close()
    if i + 1 != steps_per_epoch:  # never: both kinds of batches give len(batches), or raise
        raise RunError(f"epoch {epoch + 1} gave {i + 1} batches, not {steps_per_epoch}")
    return _checked(run, records, state).means, shown


def _end_epoch(
    cfg: PipelineConfig,
    run: Run,
    m: _Models,
    batches: MemoryBatches | MixBatches,
    state: LoopState,
    epoch_means: dict[str, float],
    shown: Any,
    started: float,
    real: ImageSet | None,
    test: ImageSet | None,
) -> None:
    """5. Throughput, monitor, log, checkpoint."""
    acc, device = run.accelerator, run.accelerator.device
    steps_per_epoch = len(batches)
    elapsed = reduce_values({"t": time.perf_counter() - started}, device, op="max")["t"]
    state.epoch += 1
    epoch_rec: dict[str, Any] = {
        "epoch": state.epoch,
        **{f"epoch_{k}": v for k, v in epoch_means.items()},
        "epoch_time_s": elapsed,
        "epoch_step_time_s": elapsed / steps_per_epoch,
        "epoch_images_per_s": cfg.train.batch_size * steps_per_epoch / elapsed,
    }
    if isinstance(batches, MixBatches):
        epoch_rec.update(_mix_record(cfg, batches, device))
    last = state.epoch == cfg.train.epochs
    if test is not None and real is not None and (state.epoch % cfg.train.knn_every == 0 or last):
        if run.is_main:
            epoch_rec["knn_acc"] = run.monitor(acc.unwrap_model(m.encoder_ddp), real, test)
        acc.wait_for_everyone()
    run.logbook.log(epoch_rec, namespace="epoch")
    run.logbook.log_samples(shown, state.epoch, real.images if real is not None else None)
    if run.is_main:  # a log record, with or without progress bars
        seconds = time.perf_counter() - started  # the steps and the monitor
        logger.info(epoch_line(state.epoch, cfg.train.epochs, state.step, epoch_rec, seconds))
    if state.epoch % cfg.train.checkpoint_every == 0 or last:
        watched = [m.encoder_ddp, *m.producer.fingerprint_modules().values()]
        run.checkpoints.save(state, m.objective, m.producer, watched)


def _mix_record(cfg: PipelineConfig, batches: MixBatches, device: torch.device) -> dict[str, int]:
    """A streamed epoch's counts over all processes: broken shards and samples passed (``mix.on_error:
    skip``) and the samples drawn per set."""
    out: dict[str, int] = {}
    if cfg.mix.on_error == "skip":
        skipped = reduce_values({"n": float(batches.skipped_in_epoch)}, device, op="sum")["n"]
        out["epoch_skipped"] = int(skipped)
    drawn = drawn_record(batches.drawn, batches.info.sets)
    totals = reduce_values({k: float(v) for k, v in drawn.items()}, device, op="sum")
    out.update({k: round(totals[k]) for k in drawn})
    return out
