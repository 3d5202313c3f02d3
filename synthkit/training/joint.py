"""The joint training loop: contrastive encoder + hard-sample generator, under Accelerate.

One loop serves both the method and its baseline: with ``hsg.enabled = false`` it is plain SimCLR on the
real data. Read top to bottom:

1. set up the run directory, the Accelerator and the data;
2. build encoder, views and (with HSG) the conditional GAN; prepare them;
3. resume from the newest checkpoint when asked;
4. per epoch: refresh the conditions, then per step: D step, then one shared encoder pass that trains
   the encoder on real + synthetic views and G on realism + hardness (METHOD.md, "HSG with a
   conditional GAN");
5. monitor (kNN), log, checkpoint;
6. publish the final weights for ``synthkit generate`` and ``synthkit eval``.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, gather_object, set_seed
from tqdm.auto import tqdm

from synthkit.config import PipelineConfig, dump_yaml, load_pipeline, to_dict
from synthkit.data.sources import ImageSet, load_source
from synthkit.data.views import Views, to_float
from synthkit.encoders.model import Encoder, extract_features
from synthkit.encoders.momentum import MomentumEncoder
from synthkit.generators.cgan import build_cgan
from synthkit.metrics.knn import knn_accuracy
from synthkit.producers.conditions import Conditions, make_conditions, num_conditions
from synthkit.producers.hard_samples import HardSampleProducer, hsg_lambda
from synthkit.producers.positive_pairs import (
    AdaptiveTarget,
    PairProducer,
    schedule_progress,
    target_similarity,
)
from synthkit.provenance import created_by
from synthkit.training import checkpoint as ckpt
from synthkit.training.artifacts import GanInit, load_final, load_gan_init, save_final
from synthkit.training.batches import MemoryBatches, MixBatches
from synthkit.training.state import LoopState, load_loop_state, save_loop_state
from synthkit.training.steps import StepParts, gan_step, joint_step, plain_step

MONITOR_MAX_TRAIN = 10_000
PRETRAIN_EPOCH_BASE = 1_000_000


class RunError(RuntimeError):
    """The run directory cannot be used as asked (exists already, config mismatch on resume, ...)."""


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def _trackers() -> list[str]:
    return ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []


def _write_run_files(
    accelerator: Accelerator, run_dir: Path, cfg: PipelineConfig, data: dict[str, Any], **extra: Any
) -> None:
    """Write ``config.yaml`` (resolved) and ``run.json`` (version, seed, processes, data) on rank 0."""
    if not accelerator.is_main_process:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    info = {
        "created_by": created_by(),
        "seed": cfg.train.seed,
        "num_processes": accelerator.num_processes,
        **extra,
        "data": data,
    }
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _check_run_dir(cfg: PipelineConfig, run_dir: Path, resume: bool) -> None:
    saved = run_dir / "config.yaml"
    if not resume:
        if saved.exists():
            raise RunError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        return
    if not saved.exists():
        raise RunError(f"cannot resume: {run_dir} holds no run (no config.yaml)")
    old = to_dict(load_pipeline(saved))
    new = to_dict(cfg)
    old["train"]["epochs"] = new["train"]["epochs"]  # extending a run is allowed
    diffs = [
        f"{s}.{k}: {old[s][k]!r} -> {new[s][k]!r}" for s in new for k in new[s] if old[s].get(k) != new[s][k]
    ]
    if diffs:
        raise RunError(
            "cannot resume with a different config (only train.epochs may change): " + "; ".join(diffs)
        )


class _JsonlLog:
    """Metrics to a JSONL file in the run directory (always) and to Accelerate's trackers (if any)."""

    def __init__(self, accelerator: Accelerator, path: Path) -> None:
        self.accelerator, self.path = accelerator, path

    def truncate_after(self, step: int) -> None:
        if self.path.exists():
            keep = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in keep))

    def __call__(self, record: dict[str, Any], step: int) -> None:
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **record}) + "\n")
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.accelerator.log(numeric, step=step)


def _refresh_conditions(
    cfg: PipelineConfig,
    accelerator: Accelerator,
    encoder: Encoder,
    real: ImageSet,
    previous: Conditions | None,
    epoch: int,
    num_classes: int,
) -> Conditions:
    """Compute the conditions on the main process and broadcast them, so every process agrees."""
    labels = torch.zeros(len(real), dtype=torch.long, device=accelerator.device)
    if accelerator.is_main_process:
        feats = (
            extract_features(encoder, real.images, device=accelerator.device)
            if cfg.conditions.mode == "kmeans"
            else None
        )
        cond = make_conditions(
            cfg.conditions,
            feats,
            real.labels,
            seed=cfg.train.seed + epoch,
            previous=previous,
            num_label_classes=len(real.classes) if real.classes else None,
        )
        labels = cond.labels.to(accelerator.device)
    labels = broadcast(labels, from_process=0).cpu()
    return Conditions(labels, num_classes, cfg.conditions.mode)


@torch.no_grad()
def _knn_monitor(
    cfg: PipelineConfig, encoder: Encoder, real: ImageSet, test: ImageSet, device: torch.device
) -> float:
    n = min(len(real), MONITOR_MAX_TRAIN)
    train_f = extract_features(encoder, real.images[:n], device=device)
    test_f = extract_features(encoder, test.images, device=device)
    return knn_accuracy(
        train_f,
        real.labels[:n],
        test_f,
        test.labels,
        k=cfg.train.knn_k,
        temperature=cfg.train.knn_temperature,
    )


class _NaiveSynthetic:
    """The naive-synthetic baseline's sampler: a frozen EMA generator of another, finished run."""

    def __init__(self, cfg: PipelineConfig, channels: int, size: int) -> None:
        source = cfg.naive.generator_run
        art = load_final(source)
        if art.generator is None:
            raise RunError(
                f"naive.generator_run={source} holds no generator (trained with hsg.enabled=false)"
            )
        gen = art.generator
        if (gen.channels, gen.size) != (channels, size):
            raise RunError(
                f"naive.generator_run={source} makes {gen.channels}x{gen.size}x{gen.size} images but the "
                f"training data are {channels}x{size}x{size}"
            )
        self.generator, self.conditions = gen.requires_grad_(False), art.conditions
        self.hashes = art.meta["hashes"]

    @torch.no_grad()
    def sample(self, n: int, device: torch.device) -> torch.Tensor:
        self.generator.to(device)
        c = None
        if self.conditions is not None and self.conditions.num_classes:
            c = self.conditions.sample(n).to(device)
        return self.generator(torch.randn(n, self.generator.z_dim, device=device), c)


def _gan_init(cfg: PipelineConfig, real: ImageSet, n_cond: int) -> GanInit:
    """``generator.init_run``, checked against this run: same real data, same generator shape."""
    init = load_gan_init(cfg.generator.init_run)
    src = init.cfg
    same_data = {k: v for k, v in to_dict(src.data).items() if k != "root"} == {
        k: v for k, v in to_dict(cfg.data).items() if k != "root"
    }
    if not same_data or (init.conditions is not None and len(init.conditions.labels) != len(real)):
        raise RunError(
            f"generator.init_run={init.run} was trained on other real data ({to_dict(src.data)}); a GAN "
            f"started from it must train on the same images ({to_dict(cfg.data)})"
        )
    shape = (src.generator.z_dim, src.generator.g_channels, src.generator.d_channels)
    ours = (cfg.generator.z_dim, cfg.generator.g_channels, cfg.generator.d_channels)
    cond = init.conditions.num_classes if init.conditions is not None else 0
    if shape != ours or cond != n_cond or src.conditions.mode != cfg.conditions.mode:
        raise RunError(
            f"generator.init_run={init.run} has generator (z_dim, g_channels, d_channels) = {shape} with "
            f"{cond} {src.conditions.mode} conditions; this run needs {ours} with {n_cond} "
            f"{cfg.conditions.mode} conditions"
        )
    return init


def _load_init(init: GanInit, part: str, module: torch.nn.Module) -> None:
    try:
        module.load_state_dict(getattr(init, part))
    except RuntimeError as e:
        raise RunError(f"the {part} of generator.init_run={init.run} does not fit this run: {e}") from e


def _pretrain_gan(
    cfg: PipelineConfig,
    parts: StepParts,
    batches: MemoryBatches | MixBatches,
    conditions: Conditions,
    b_fake: int,
    log: _JsonlLog,
) -> None:
    """``generator.pretrain_steps`` GAN steps on realism alone, before the encoder's first step.

    Trains the HSG generator (or G_a when HPG runs alone) against D; with HPG, G_a and G_b then restart
    from it (G_b perturbed), so every generator starts from the same pre-trained G.
    """
    acc, device = parts.accelerator, parts.accelerator.device
    if parts.producer is not None:
        gen, opt, ema = parts.generator, parts.opt_g, parts.producer.ema
    else:
        assert parts.pairs is not None
        gen, opt, ema = parts.generator_a, parts.opt_pair, parts.pairs.ema_a
    assert gen is not None and opt is not None
    z_dim, n_cond = cfg.generator.z_dim, conditions.num_classes
    done, pass_ = 0, 0
    while done < cfg.generator.pretrain_steps:
        # the batches' own permutations, at "epochs" the encoder's epochs never reach
        for idx, images in batches.epoch(PRETRAIN_EPOCH_BASE + pass_):
            x_real = to_float(images).to(device)
            c_real = conditions.labels[idx].to(device) if n_cond else None
            c_fake = conditions.sample(b_fake) if n_cond else None
            rec = gan_step(
                parts,
                gen,
                opt,
                x_real,
                c_real,
                torch.randn(b_fake, z_dim, device=device),
                c_fake.to(device) if c_fake is not None else None,
            )
            ema.update_parameters(acc.unwrap_model(gen))
            done += 1
            if done % cfg.train.log_every == 0 or done == cfg.generator.pretrain_steps:
                log({"pretrain_step": done, **rec}, 0)
            if done == cfg.generator.pretrain_steps:
                break
        pass_ += 1
    if parts.pairs is not None:  # G_a and G_b start from the pre-trained G's EMA, as from an init_run
        state = {k: v.detach().clone() for k, v in ema.module.state_dict().items()}
        parts.pairs.restart_from(state, seed=cfg.train.seed)


def _fingerprint(module: torch.nn.Module) -> torch.Tensor:
    flat = torch.cat([p.detach().double().flatten() for p in module.parameters()])
    return torch.stack([flat.sum(), flat.square().sum()])


def train(
    cfg: PipelineConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    accelerator: Accelerator | None = None,
) -> RunResult:
    """Train the encoder (with HSG when ``cfg.hsg.enabled``) and publish its final weights in ``run_dir``."""
    if cfg.generator.kind == "diffusion" and cfg.hsg.enabled:  # the diffusion producers' own loop
        from synthkit.training.diffusion_joint import train_diffusion_run

        return train_diffusion_run(cfg, run_dir, resume=resume, progress=progress, accelerator=accelerator)
    # 1. Run directory, Accelerator, data ---
    run_dir = Path(run_dir)
    _check_run_dir(cfg, run_dir, resume)
    accelerator = accelerator or Accelerator(
        mixed_precision=cfg.train.mixed_precision, log_with=_trackers() or None, project_dir=str(run_dir)
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.train.batch_size % world:
        raise RunError(f"train.batch_size={cfg.train.batch_size} is not divisible by {world} processes")
    ckpt_root = run_dir / "checkpoints"
    resume_from = _newest_checkpoint(ckpt_root) if resume else None
    b_real = cfg.train.batch_size // world
    mix = MixBatches(cfg.mix, b_real, rank, world, cfg.train.seed) if cfg.mix.sources else None
    real = load_source(cfg.data, "train") if mix is None or cfg.train.knn_every else None
    test = (
        load_source(cfg.data, "test")
        if real is not None and real.labels is not None and cfg.train.knn_every
        else None
    )
    if mix is not None:
        channels, size = mix.channels, mix.size
        if real is not None and real.images.shape[1:] != (channels, size, size):
            raise RunError(
                f"the mix's images are {channels}x{size}x{size} but the monitor data ({cfg.data.name}) is "
                f"{tuple(real.images.shape[1:])}; set --data.size/--data.channels to match, or "
                "--train.knn_every=0"
            )
        batches: MixBatches | MemoryBatches = mix
    else:
        channels, size = real.images.shape[1], real.images.shape[-1]
        batches = MemoryBatches(real.images, b_real, rank, world, seed=cfg.train.seed)
    steps_per_epoch = len(batches)
    if steps_per_epoch == 0:
        raise RunError(f"the training data hold fewer images than one batch of {cfg.train.batch_size}")
    gan = cfg.hsg.enabled or cfg.hpg.enabled
    n_cond = num_conditions(cfg.conditions, len(real.classes) if real.classes else None) if gan else 0
    # checked before anything is written
    init = _gan_init(cfg, real, n_cond) if gan and cfg.generator.init_run else None
    _write_run_files(
        accelerator,
        run_dir,
        cfg,
        {
            "name": real.name if mix is None else "mix",
            "train_images": len(real) if mix is None else mix.stream.epoch_samples,
            "mix": list(cfg.mix.sources),
            "channels": channels,
            "size": size,
        },
    )
    accelerator.wait_for_everyone()
    log = _JsonlLog(accelerator, run_dir / "metrics.jsonl")
    if _trackers():
        accelerator.init_trackers("synthkit", config=_flat(to_dict(cfg)))

    # 2. Models ---
    set_seed(cfg.train.seed)  # identical initial weights on every process
    encoder = Encoder(cfg.encoder, channels)
    if cfg.train.channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    views = Views(cfg.views, channels, size)
    opt_enc = torch.optim.Adam(encoder.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    hsg, hpg = cfg.hsg.enabled, cfg.hpg.enabled
    producer = HardSampleProducer(cfg.generator, cfg.hsg, channels, size, n_cond) if hsg else None
    if producer is not None and init is not None:
        _load_init(init, "generator", producer.generator)
        producer.ema.module.load_state_dict(producer.generator.state_dict())
    pairs: PairProducer | None = None
    discriminator = producer.discriminator if producer is not None else None
    if hpg:
        g_a, d_own = build_cgan(cfg.generator, channels, size, n_cond)
        if init is not None:
            _load_init(init, "generator", g_a)
        pairs = PairProducer(cfg.generator, cfg.hpg, g_a)
        discriminator = discriminator if discriminator is not None else d_own  # one D judges every generator
    if init is not None and discriminator is not None:
        _load_init(init, "discriminator", discriminator)
    if cfg.train.channels_last:
        for module in (producer.generator if producer else None, discriminator, pairs):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    momentum = (
        MomentumEncoder(encoder, cfg.objective.queue_size, cfg.encoder.proj_dim, seed=cfg.train.seed)
        if cfg.objective.name == "moco"
        else None
    )
    naive = _NaiveSynthetic(cfg, channels, size) if cfg.naive.generator_run else None
    prepare: list[Any] = [encoder, opt_enc]
    if gan:
        assert discriminator is not None
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.generator.lr_d, betas=cfg.generator.betas)
        prepare += [discriminator, opt_d]
    if producer is not None:
        opt_g = torch.optim.Adam(
            producer.generator.parameters(), lr=cfg.generator.lr_g, betas=cfg.generator.betas
        )
        prepare += [producer.generator, opt_g]
    if pairs is not None:
        prepare += [pairs.generator_a, pairs.generator_b]
    prepared = accelerator.prepare(*prepare)
    prepared = list(prepared) if isinstance(prepared, (list, tuple)) else [prepared]
    encoder_ddp, opt_enc = prepared[0], prepared[1]
    parts = StepParts(
        accelerator,
        encoder_ddp,
        views,
        opt_enc,
        cfg.objective.temperature,
        gen_cfg=cfg.generator,
        momentum=momentum,
        moco_momentum=cfg.objective.moco_momentum,
        queue_synthetic=cfg.objective.queue_synthetic,
    )
    rest = prepared[2:]
    if gan:
        parts.discriminator, parts.opt_d, rest = rest[0], rest[1], rest[2:]
    if producer is not None:
        parts.producer, parts.generator, parts.opt_g, rest = producer, rest[0], rest[1], rest[2:]
        producer.ema.to(accelerator.device)
    if pairs is not None:
        parts.pairs, parts.generator_a, parts.generator_b = pairs, rest[0], rest[1]
        # one optimizer over both generators, built on the prepared modules' parameters
        parts.opt_pair = accelerator.prepare(pairs.optimizer(rest[0], rest[1]))
        pairs.ema_a.to(accelerator.device)
        pairs.ema_b.to(accelerator.device)
    if momentum is not None:
        momentum.to(accelerator.device)
    loop_modules: dict[str, torch.nn.Module] = {}
    if pairs is not None:
        loop_modules.update(pair_ema_a=pairs.ema_a, pair_ema_b=pairs.ema_b)
    if momentum is not None:
        loop_modules["momentum"] = momentum
    b_syn = max(1, round(b_real * cfg.hsg.synthetic_ratio)) if hsg else 0
    b_pair = max(1, round(b_real * cfg.hpg.pair_ratio)) if hpg else 0
    b_naive = max(1, round(b_real * cfg.naive.synthetic_ratio)) if naive else 0
    adaptive = AdaptiveTarget(cfg.hpg.adaptive_momentum)
    probe = min(32, b_real) if hpg else 0

    # 3. Resume (the checkpoint was verified before anything was written) ---
    state = LoopState()
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = load_loop_state(resume_from, producer, loop_modules)
        adaptive.value = state.hpg_adaptive
        if accelerator.is_main_process:
            log.truncate_after(state.step)  # drop records of steps the checkpoint does not include
    else:
        # distinct augmentations and latents per process; same weights (set above)
        torch.manual_seed(cfg.train.seed * 1009 + 7919 * (rank + 1))
        if init is not None:  # the starting pseudo-classes; epoch 0's k-means is matched to them
            state.conditions = init.conditions
    conditions = state.conditions
    refreshed_at: int | None = None
    if resume_from is None and gan and cfg.generator.pretrain_steps:
        conditions = _refresh_conditions(
            cfg, accelerator, accelerator.unwrap_model(encoder_ddp), real, conditions, 0, n_cond
        )
        refreshed_at = 0  # the encoder does not change during pre-training: epoch 0 keeps these
        _pretrain_gan(cfg, parts, batches, conditions, b_syn if hsg else 2 * b_pair, log)

    # 4. Epochs ---
    device = accelerator.device
    for epoch in range(state.epoch, cfg.train.epochs):
        due = conditions is None or epoch % cfg.conditions.refresh_every == 0
        if gan and due and refreshed_at != epoch:
            conditions = _refresh_conditions(
                cfg, accelerator, accelerator.unwrap_model(encoder_ddp), real, conditions, epoch, n_cond
            )
        encoder_ddp.train()
        sums: dict[str, float] = {}
        bar = tqdm(
            batches.epoch(epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
            disable=not (progress and accelerator.is_main_process),
            leave=False,
        )
        for i, (idx, images) in enumerate(bar):
            x_real = to_float(images).to(device)
            t = epoch + i / steps_per_epoch
            if not gan:
                synthetic = naive.sample(b_naive, device) if naive is not None else None
                rec = plain_step(parts, x_real, synthetic)
            else:
                c_real = conditions.labels[idx].to(device) if n_cond else None
                c_fake = conditions.sample(b_syn) if n_cond and hsg else None
                pair_c = conditions.sample(b_pair) if n_cond and hpg else None
                target = 1.0
                if hpg:
                    progress_hpg = schedule_progress(cfg.hpg, t, cfg.train.epochs)
                    target = target_similarity(cfg.hpg, progress_hpg, adaptive.value)
                rec = joint_step(
                    parts,
                    x_real,
                    c_real,
                    z=torch.randn(b_syn, cfg.generator.z_dim, device=device) if hsg else None,
                    c_fake=c_fake.to(device) if c_fake is not None else None,
                    lambda_hard=hsg_lambda(cfg.hsg, t),
                    use_synthetic=hsg and epoch >= cfg.hsg.warmup_epochs,
                    pair_z=torch.randn(b_pair, cfg.generator.z_dim, device=device) if hpg else None,
                    pair_c=pair_c.to(device) if pair_c is not None else None,
                    pair_target=target,
                    use_pairs=hpg and epoch >= cfg.hpg.warmup_epochs,
                    real_positive_probe=probe,
                )
                if hpg and "real_positive_similarity" in rec:
                    state.hpg_adaptive = adaptive.update(rec["real_positive_similarity"])
            state.step += 1
            if cfg.train.record_indices:
                if isinstance(idx, list):  # streamed from shards: sample keys, gathered as objects
                    state.seen_keys.append(gather_object([idx]))
                else:
                    state.seen.append(accelerator.gather(idx.to(device)).view(world, -1).cpu())
            for k, v in rec.items():
                sums[k] = sums.get(k, 0.0) + v
            if state.step % cfg.train.log_every == 0:
                log({"epoch": epoch, **rec}, state.step)
                bar.set_postfix(loss=f"{rec.get('loss_cl', 0):.3f}")
        bar.close()

        # 5. Monitor, log, checkpoint ---
        state.epoch = epoch + 1
        state.conditions = conditions
        epoch_rec: dict[str, Any] = {
            "epoch": state.epoch,
            **{f"epoch_{k}": v / steps_per_epoch for k, v in sums.items()},
        }
        if (
            test is not None
            and cfg.train.knn_every
            and (state.epoch % cfg.train.knn_every == 0 or state.epoch == cfg.train.epochs)
        ):
            if accelerator.is_main_process:
                epoch_rec["knn_acc"] = _knn_monitor(
                    cfg, accelerator.unwrap_model(encoder_ddp), real, test, device
                )
            accelerator.wait_for_everyone()
        log(epoch_rec, state.step)
        if accelerator.is_main_process and progress:
            shown = {k: round(v, 4) for k, v in epoch_rec.items() if isinstance(v, float)}
            tqdm.write(f"epoch {state.epoch}/{cfg.train.epochs} {shown}")
        if state.epoch % cfg.train.checkpoint_every == 0 or state.epoch == cfg.train.epochs:
            _save_checkpoint(accelerator, ckpt_root, state, producer, cfg, loop_modules)

    # 6. Publish final weights and a summary ---
    fingerprints = {"encoder": accelerator.gather(_fingerprint(encoder_ddp).to(device)).view(world, -1)}
    if producer is not None:
        fingerprints["generator"] = accelerator.gather(_fingerprint(parts.generator).to(device)).view(
            world, -1
        )
    if momentum is not None:  # the key encoder and the queue (filled from every process's keys)
        flat = torch.cat([momentum.queue.flatten(), *(q.detach().flatten() for q in momentum.parameters())])
        fp = torch.stack([flat.double().sum(), flat.double().square().sum()])
        fingerprints["momentum"] = accelerator.gather(fp.to(device)).view(world, -1)
    if pairs is not None:
        fingerprints["generator_b"] = accelerator.gather(_fingerprint(parts.generator_b).to(device)).view(
            world, -1
        )
    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        enc = accelerator.unwrap_model(encoder_ddp)
        hashes = save_final(
            run_dir,
            cfg,
            enc,
            producer,
            conditions,
            epochs=state.epoch,
            steps=state.step,
            pairs=pairs,
            discriminator=accelerator.unwrap_model(parts.discriminator) if gan else None,
            generator_steps=(
                (init.generator_steps if init else 0) + cfg.generator.pretrain_steps + state.step
                if gan
                else None
            ),
        )
        in_sync = all(bool((f == f[0]).all()) for f in fingerprints.values())
        summary = {
            "epochs": state.epoch,
            "steps": state.step,
            "num_processes": world,
            "weights_in_sync": in_sync,
            "fingerprints": {k: v.tolist() for k, v in fingerprints.items()},
            "hashes": hashes,
        }
        if init is not None:
            summary["generator_init"] = {"run": str(init.run), "hashes": init.hashes}
        last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        epoch_lines = [r for r in last if "epoch_loss_cl" in r]
        if epoch_lines:
            summary["last_epoch"] = epoch_lines[-1]
        if cfg.train.record_indices and state.seen_keys:
            (run_dir / "indices.json").write_text(
                json.dumps(
                    {f"rank{r}": [k for step in state.seen_keys for k in step[r]] for r in range(world)}
                )
            )
        elif cfg.train.record_indices and state.seen:
            seen = torch.cat(state.seen, dim=1)
            (run_dir / "indices.json").write_text(
                json.dumps({f"rank{r}": seen[r].tolist() for r in range(world)})
            )
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return RunResult(run_dir, summary)


def _newest_checkpoint(root: Path) -> Path:
    found = ckpt.checkpoint_dirs(root)
    if not found:
        raise RunError(f"cannot resume: no checkpoint under {root}")
    ckpt.verify_checkpoint(found[-1])
    return found[-1]


def _save_checkpoint(
    accelerator: Accelerator,
    root: Path,
    state: LoopState,
    producer: HardSampleProducer | None,
    cfg: PipelineConfig,
    modules: dict[str, torch.nn.Module] | None = None,
) -> None:
    name = ckpt.checkpoint_name(state.epoch)
    tmp = root / f".tmp_{name}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            save_loop_state(tmp, state, producer, modules)
            (tmp / "config.yaml").write_text(dump_yaml(cfg))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            ckpt.publish(tmp, root / name)
            ckpt.prune(root, cfg.train.keep_checkpoints)
    except OSError as e:
        reason = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise ckpt.CheckpointError(
            f"could not write checkpoint {root / name}: {reason}; earlier checkpoints are intact"
        ) from e
    accelerator.wait_for_everyone()
