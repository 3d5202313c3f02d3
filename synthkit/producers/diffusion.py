"""The diffusion producer: encoder-guided hard samples and branched positive pairs from a conditional UNet.

docs/method.md, "The same two producers with diffusion". Sampling a diffusion model costs tens of UNet passes
per image, so instead of a generator step per encoder step the producer refreshes a synthetic *pool*:

1. for the warm-up epochs (the earliest of ``hsg.warmup_epochs`` / ``hpg.warmup_epochs``) the encoder trains
   on real data alone;
2. then, once, stage 1: the conditions (k-means on the warmed-up encoder's features, or labels, or none),
   and the (pseudo-)class-conditional ``UNet2DModel`` trained on the real images with ``DDPMScheduler``
   (epsilon MSE) under Accelerate, its EMA (diffusers' ``EMAModel``) kept for sampling; the conditions stay
   fixed afterwards, since the UNet's class embedding is tied to them;
3. every ``generator.refresh_every`` epochs the main process samples a pool of ``generator.pool_size``
   images *with the current encoder* (HSG: guided hard samples, with the ``hsg`` ramp on the guidance
   scale; HPG: branched pairs, with ``t_split`` scheduled over training), writes it as the shard set
   ``RUN/pools/epoch-EEEE`` through the export's writer (``samplers/write.py``: one format for pools and
   exports) and every process reads it back through the safe reader;
4. every encoder step draws ``hsg.synthetic_ratio`` x B hard samples and ``hpg.pair_ratio`` x B pairs from
   the pool (a pair: one positive group of four views).

Published: the EMA UNet and its noise schedule in diffusers' layout (``final/diffusion``), the conditions;
read back as the frozen sampler of ``samplers/diffusion.py``, which exports sample with DDIM at the
end-of-training settings (the full guidance strength, ``t_split_end``). The trainer builds on that sampler:
its pools are made by it at each pool's settings.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from torch import nn

from synthkit.config import PipelineConfig, to_dict
from synthkit.data.batches import FIT_EPOCH, REFERENCE_EPOCH, MemoryBatches, MixBatches, sample_images
from synthkit.data.views import to_float
from synthkit.distributed import reduce_values
from synthkit.encoders.model import eval_features
from synthkit.errors import CheckpointError, ModelError, RunError
from synthkit.generators.diffusion import (
    build_unet,
    diffusion_loss,
    load_pretrained,
    save_diffusion,
    to_model_range,
)
from synthkit.objectives.scoring import Scorer, reference_batch
from synthkit.producer_configs.diffusion import DiffusionConfig
from synthkit.producers.base import Chunk, Contribution, Producer, StepInput, TrainContext
from synthkit.producers.conditions import num_conditions, refresh_conditions, refresh_stream_conditions
from synthkit.producers.hard_samples import hsg_lambda
from synthkit.progress import Phase
from synthkit.provenance import state_dict_hash
from synthkit.samplers.conditions import Conditions, load_conditions, save_conditions
from synthkit.samplers.diffusion import DIFFUSION_DIR, DiffusionSampler, Settings, resize
from synthkit.samplers.diffusion_sampling import guidance_scale_at, t_split_at
from synthkit.samplers.write import SetEvents, SetPlan, write_samples
from synthkit.shards import iter_samples
from synthkit.weights import cpu_state, load_into, load_state_dict, save_state_dict

if TYPE_CHECKING:
    from accelerate import Accelerator

    from synthkit.objectives.scoring import Scorer

POOLS_DIR = "pools"
STATE_JSON = "producer_state.json"

logger = logging.getLogger(__name__)


@dataclass
class Pool:
    """A pool read back for training: hard images and pair images (uint8, N x C x H x W)."""

    hard: torch.Tensor
    pair_a: torch.Tensor
    pair_b: torch.Tensor


def read_pool(directory: str | Path) -> Pool:
    """Read a pool (any shard set of hard samples and pairs) through synthkit's safe reader."""
    hard: list[np.ndarray] = []
    a: dict[int, np.ndarray] = {}
    b: dict[int, np.ndarray] = {}
    for s in iter_samples(directory):
        kind = s["meta"]["kind"]
        if kind == "hard":
            hard.append(s["image"])
        elif kind in ("pair_a", "pair_b"):
            (a if kind == "pair_a" else b)[int(s["meta"]["pair_id"])] = s["image"]
    ids = sorted(set(a) & set(b))

    def stack(arrays: list[np.ndarray]) -> torch.Tensor:
        if not arrays:
            return torch.empty(0, dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    return Pool(stack(hard), stack([a[i] for i in ids]), stack([b[i] for i in ids]))


def _load_pretrained(
    cfg: PipelineConfig, channels: int, size: int, n_cond: int
) -> tuple[UNet2DModel, dict[str, Any]]:
    """``generator.pretrained``, loaded (safetensors only, never downloaded) and checked against the data."""
    d = cfg.generator
    assert isinstance(d, DiffusionConfig) and d.pretrained is not None
    found = load_pretrained(d.pretrained, default_scheduler=d)
    unet, where = found.unet, f"generator.pretrained={d.pretrained}"
    c_in, c_out, s = unet.config.in_channels, unet.config.out_channels, unet.config.sample_size
    if c_in != channels or c_out != channels:
        raise ModelError(
            f"{where} makes {c_out}-channel images from {c_in}-channel inputs, the data have {channels} "
            "channels (data.channels)"
        )
    if s != size and not d.resize:
        raise ModelError(
            f"{where} makes {s} px images but data.size is {size}; set --data.size={s}, or "
            "--generator.resize=true to resize its samples (recorded in every output)"
        )
    if unet.config.class_embed_type is not None:
        raise ModelError(
            f"{where} uses class_embed_type={unet.config.class_embed_type!r}; synthkit conditions through "
            "num_class_embeds only"
        )
    k = int(unet.config.num_class_embeds or 0)
    if d.train_steps and k and k != n_cond:
        raise ModelError(
            f"{where} has {k} classes; fine-tuning it (generator.train_steps={d.train_steps}) re-learns them "
            f"as this run's {n_cond} conditions: set conditions.k={k} (or generator.train_steps=0 to sample "
            "its own classes)"
        )
    info = {
        "path": str(Path(d.pretrained).resolve()),
        "layout": found.layout,
        "scheduler": found.scheduler_source,
        "hash": state_dict_hash(cpu_state(unet)),
        "size": int(s),
        "resized_to": size if s != size else None,
        "fine_tune_steps": d.train_steps,
        "num_classes": k,
        "scheduler_config": found.scheduler_config,
    }
    return unet, info


class _PoolProgress(SetEvents):
    def __init__(self, phase: Phase) -> None:
        self.phase = phase

    def made(self, n: int) -> None:
        self.phase.update(n)


class DiffusionProducer(Producer):
    """A conditional UNet (trained in stage 1, or loaded from a run) that makes guided samples and pairs."""

    kind: ClassVar[str] = "diffusion"
    Config: ClassVar[type] = DiffusionConfig
    Sampler: ClassVar[type] = DiffusionSampler

    def __init__(
        self, cfg: PipelineConfig, ctx: TrainContext, frozen: DiffusionSampler, model: UNet2DModel | None
    ) -> None:
        d = cfg.generator
        assert isinstance(d, DiffusionConfig)
        self.cfg, self.d, self.ctx = cfg, d, ctx
        # the sampler: the EMA weights after stage 1 (or a pretrained model), its conditions and pools
        self.frozen = frozen
        self.pool_settings = frozen.settings  # those of the newest pool (the end-of-training ones before)
        # the trainable UNet (None: a pretrained model sampled as it is), its EMA
        self.model = model
        self.ema = (
            EMAModel(model.parameters(), decay=d.ema_decay, model_cls=UNet2DModel, model_config=model.config)
            if model is not None
            else None
        )
        warmups = [
            w
            for w, on in ((cfg.hsg.warmup_epochs, cfg.hsg.enabled), (cfg.hpg.warmup_epochs, cfg.hpg.enabled))
            if on
        ]
        self.warm = min(min(warmups), cfg.train.epochs)
        world = ctx.accelerator.num_processes
        b_real = cfg.train.batch_size // world
        self.b_hard = max(1, round(b_real * cfg.hsg.synthetic_ratio)) if cfg.hsg.enabled else 0
        self.b_pair = max(1, round(b_real * cfg.hpg.pair_ratio)) if cfg.hpg.enabled else 0
        # the pool holds hard samples and pair members in the proportion a step draws them
        per_step = self.b_hard + 2 * self.b_pair
        n_pairs = round(d.pool_size * self.b_pair / per_step)
        self.pool_counts = {"hard": d.pool_size - 2 * n_pairs if self.b_hard else 0, "pair": 2 * n_pairs}
        self.stage1_done = False
        self.pool: Pool | None = None
        self.pool_dir: Path | None = None

    @classmethod
    def for_training(cls, cfg: PipelineConfig, ctx: TrainContext) -> DiffusionProducer:
        real = ctx.real  # None: real data streamed from shard sets (mix.sources)
        d = cfg.generator
        assert isinstance(d, DiffusionConfig)
        n_cond = num_conditions(
            cfg.conditions, len(real.classes) if real is not None and real.classes else None
        )
        if d.pretrained:
            unet, info = _load_pretrained(cfg, ctx.channels, ctx.size, n_cond)
            n_cond = int(unet.config.num_class_embeds or 0)
            scheduler_config = info.pop("scheduler_config")
            frozen = DiffusionSampler(
                cfg, ctx.channels, ctx.size, n_cond, unet=copy.deepcopy(unet),
                scheduler_config=scheduler_config, pretrained=info,
            )  # fmt: skip
            # the trainable UNet starts from the pretrained weights; none is needed without stage-1 steps
            return cls(cfg, ctx, frozen, unet if d.train_steps else None)
        frozen = DiffusionSampler(cfg, ctx.channels, ctx.size, n_cond)
        # the trainable UNet starts from the same weights on every process (the loop seeded them)
        return cls(cfg, ctx, frozen, build_unet(d, ctx.channels, ctx.size, n_cond))

    def prepare(self, accelerator: Accelerator) -> None:
        self.frozen.unet.to(accelerator.device)
        if self.model is None:
            return
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.d.lr, weight_decay=0.0)
        self.model_ddp, self.opt = accelerator.prepare(self.model, opt)
        self.ema.to(accelerator.device)

    def start(self, resumed: bool) -> None:
        # pools of epochs after the checkpoint (or all, on a fresh start) are made again; they are
        # deterministic, and deleting them keeps a rerun from reading a pool an aborted attempt left
        assert self.ctx is not None
        if self.ctx.accelerator.is_main_process:
            root = self.ctx.run_dir / POOLS_DIR
            keep = {self.pool_dir.name} if self.pool_dir is not None else set()
            for path in sorted(root.glob("epoch-*")) if root.is_dir() else []:
                if path.name not in keep:
                    shutil.rmtree(path)
        self.ctx.accelerator.wait_for_everyone()

    def on_epoch_start(self, epoch: int) -> None:
        if epoch >= self.warm and not self.stage1_done:
            self._stage1()
        if self.stage1_done and (epoch - self.warm) % self.d.refresh_every == 0:
            self._refresh_pool(epoch)

    def finish(self) -> None:
        if not self.stage1_done:  # every epoch was warm-up: train the UNet anyway, so the run can generate
            self._stage1()

    def _stage1(self) -> None:
        """Conditions from the warmed-up encoder, then the UNet on the real images (every process); a
        pretrained model without training steps samples with its own class ids, uniformly."""
        ctx = self.ctx
        assert ctx is not None
        acc, d, cfg = ctx.accelerator, self.d, self.cfg
        if self.model is None:
            k = self.frozen.num_classes
            self.frozen.conditions = Conditions(torch.arange(k), k, "model") if k else None
            self.stage1_done = True
            return
        world, rank = acc.num_processes, acc.process_index
        if d.batch_size % world:
            raise RunError(f"generator.batch_size={d.batch_size} is not divisible by {world} processes")
        batches: MemoryBatches | MixBatches
        if ctx.real is not None:
            self.frozen.conditions = refresh_conditions(
                cfg.conditions, acc, ctx.encoder(), ctx.real, None, seed=cfg.train.seed + self.warm,
                num_classes=self.frozen.num_classes,
            )  # fmt: skip
            batches = MemoryBatches(
                ctx.real.images, d.batch_size // world, rank, world, seed=cfg.train.seed + 17
            )
        else:  # streamed: k-means on a bounded sample; the UNet reads the stream in batches of its own size
            self.frozen.conditions = refresh_stream_conditions(
                cfg.conditions, acc, ctx.encoder(),
                lambda: sample_images(ctx.batches, cfg.conditions.fit_samples, FIT_EPOCH + self.warm),
                None, seed=cfg.train.seed + self.warm, num_classes=self.frozen.num_classes,
            )  # fmt: skip
            batches = MixBatches(cfg.mix, d.batch_size // world, rank, world, seed=cfg.train.seed + 17)
        if len(batches) == 0:
            raise RunError(f"the real data hold fewer images than one diffusion batch of {d.batch_size}")
        scheduler = DDPMScheduler.from_config(self.frozen.scheduler_config)
        g = torch.Generator(device=acc.device).manual_seed(cfg.train.seed * 1009 + 7919 * (rank + 1))
        step, epoch, last = 0, 0, torch.tensor(float("nan"))  # the last loss, on the device until logged
        bar = Phase(
            "diffusion stage 1 (UNet on the real images)",
            d.train_steps,
            progress=ctx.progress,
            logger=logger,
            main=acc.is_main_process,
            detail=f", batch {d.batch_size}",
        ).start()
        self.model_ddp.train()
        while step < d.train_steps:
            for idx, images in batches.epoch(epoch):
                x = to_float(images).to(acc.device)
                c = self._batch_conditions(idx, x)
                x0 = to_model_range(self._to_model_size(x))
                with acc.autocast():
                    loss = diffusion_loss(self.model_ddp, scheduler, x0, c, generator=g)
                self.opt.zero_grad(set_to_none=True)
                acc.backward(loss)
                acc.clip_grad_norm_(self.model_ddp.parameters(), 1.0)
                self.opt.step()
                self.ema.step(acc.unwrap_model(self.model_ddp).parameters())
                step += 1
                last = loss.detach()
                bar.update(1)
                if step % cfg.train.log_every == 0:
                    loss_now = reduce_values({"loss_diffusion": float(last)}, acc.device)
                    ctx.log({"stage": "diffusion", "diffusion_step": step, **loss_now})
                if step >= d.train_steps:
                    break
            epoch += 1
        final = reduce_values({"diffusion_final_loss": float(last)}, acc.device)
        ctx.log({"stage": "diffusion", **final})
        bar.result(loss_diffusion=final["diffusion_final_loss"])
        bar.close()
        self.ema.copy_to(self.frozen.unet.parameters())
        self.frozen.trained_steps = d.train_steps
        self.stage1_done = True
        # the encoder's randomness afterwards does not depend on how long stage 1 ran
        torch.manual_seed(cfg.train.seed * 1009 + 7919 * (rank + 1) + 1)

    def _refresh_pool(self, epoch: int) -> None:
        """A pool sampled with the current encoder by the main process, read back by every process."""
        ctx = self.ctx
        assert ctx is not None
        acc, cfg, d = ctx.accelerator, self.cfg, self.d
        progress = (epoch - self.warm) / max(1, cfg.train.epochs - 1 - self.warm)
        self.pool_settings = Settings(
            guidance_scale_at(d, hsg_lambda(cfg.hsg, epoch + 1)) if cfg.hsg.enabled else 0.0,
            t_split_at(d, progress),
        )
        sampler = self.frozen.at(self.pool_settings)
        pool_dir = ctx.run_dir / POOLS_DIR / f"epoch-{epoch:04d}"
        if acc.is_main_process:
            encoder = ctx.encoder()
            real = (
                ctx.real.images
                if ctx.real is not None
                else sample_images(ctx.batches, 4 * cfg.train.batch_size, REFERENCE_EPOCH)
            )
            reference = reference_batch(real, cfg.train.batch_size, cfg.train.seed).to(acc.device)
            scorer = Scorer(encoder, ctx.views, ctx.objective, reference, seed=cfg.train.seed)
            what = " and ".join(f"{n} {k}" for k, n in self.pool_counts.items() if n)
            phase = Phase(
                f"sampling the pool of epoch {epoch + 1}",
                sum(self.pool_counts.values()),
                "img",
                progress=ctx.progress,
                logger=logger,
                detail=f" ({what}; guidance {sampler.guidance_scale:.3g}, t_split {sampler.t_split:.3g})",
            ).start()
            plan = SetPlan(
                "pool",
                self.pool_counts,
                seed=cfg.train.seed * 100_003 + epoch,
                batch_size=d.sample_batch_size,
                maxcount=max(1, d.pool_size // max(1, acc.num_processes)),
                manifest_fields={
                    "config": to_dict(cfg),
                    "producer": {"name": "diffusion-pool", "epoch": epoch},
                },
            )
            res = write_samples(pool_dir, plan, sampler, scorer, events=_PoolProgress(phase))
            rec: dict[str, Any] = {
                "epoch": epoch,
                "pool_guidance_scale": sampler.guidance_scale,
                "pool_t_split": sampler.t_split,
            }
            hard = res.hardness[len(res.hardness) - self.pool_counts["hard"] :]  # pairs come first
            if hard:
                rec["pool_hardness"] = sum(hard) / len(hard)
            if res.pair_similarity:
                rec["pool_pair_similarity"] = sum(res.pair_similarity) / len(res.pair_similarity)
            self.frozen.pools.append(rec)
            ctx.log(rec)
            phase.result(
                **{
                    k.removeprefix("pool_"): rec[k]
                    for k in ("pool_hardness", "pool_pair_similarity")
                    if k in rec
                }
            )
            phase.close()
        acc.wait_for_everyone()
        self.pool, self.pool_dir = read_pool(pool_dir), pool_dir

    def contribute(self, batch: StepInput) -> Contribution | None:
        pool = self.pool
        if pool is None:
            return None
        device = batch.images.device
        chunks = []
        # drawn with the global generator: every process its own, checkpointed with the run
        if self.b_hard and len(pool.hard) and batch.epoch >= self.cfg.hsg.warmup_epochs:
            chunks.append(
                Chunk(to_float(pool.hard[torch.randint(len(pool.hard), (self.b_hard,))]).to(device), "syn")
            )
        if self.b_pair and len(pool.pair_a) and batch.epoch >= self.cfg.hpg.warmup_epochs:
            i = torch.randint(len(pool.pair_a), (self.b_pair,))
            chunks.append(
                Chunk(
                    to_float(pool.pair_a[i]).to(device), "pair", partner=to_float(pool.pair_b[i]).to(device)
                )
            )
        return Contribution(chunks) if chunks else None

    def save_state(self, directory: Path) -> None:
        save_state_dict(self.frozen.unet, directory / "producer_unet_ema.safetensors")
        if self.frozen.conditions is not None:
            save_conditions(self.frozen.conditions, directory / "producer_conditions.safetensors")
        run_dir = self.ctx.run_dir if self.ctx is not None else directory
        meta = {
            "stage1_done": self.stage1_done,
            "trained_steps": self.frozen.trained_steps,
            "guidance_scale": self.pool_settings.guidance_scale,
            "t_split": self.pool_settings.t_split,
            "pool_dir": None if self.pool_dir is None else self.pool_dir.relative_to(run_dir).as_posix(),
            "pools": self.frozen.pools,
            "conditions": None
            if self.frozen.conditions is None
            else {"num_classes": self.frozen.conditions.num_classes, "source": self.frozen.conditions.source},
        }
        (directory / STATE_JSON).write_text(json.dumps(meta, indent=2))

    def checkpoint_layout(self) -> dict[str, nn.Module]:
        return {"producer_unet_ema.safetensors": self.frozen.unet}

    def load_state(self, directory: Path) -> None:
        assert self.ctx is not None
        path = directory / STATE_JSON
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            self.stage1_done = bool(meta["stage1_done"])
            self.frozen.trained_steps = int(meta["trained_steps"])
            self.pool_settings = Settings(float(meta["guidance_scale"]), float(meta["t_split"]))
            self.frozen.pools = list(meta["pools"])
            pool_dir, c = meta["pool_dir"], meta["conditions"]
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {e}") from e
        weights = directory / "producer_unet_ema.safetensors"
        load_into(self.frozen.unet, load_state_dict(weights), str(weights))
        if c is not None:
            self.frozen.conditions = load_conditions(directory / "producer_conditions.safetensors", c)
        if pool_dir is not None:
            if not isinstance(pool_dir, str) or ".." in Path(pool_dir).parts or Path(pool_dir).is_absolute():
                raise CheckpointError(f"{path}: pool_dir {pool_dir!r} is not a pool of this run")
            self.pool_dir = self.ctx.run_dir / pool_dir
            self.pool = read_pool(self.pool_dir)

    def _batch_conditions(self, index: Any, x: torch.Tensor) -> torch.Tensor | None:
        """A real batch's conditions: looked up (in-memory data) or assigned by its features (streamed)."""
        cond = self.frozen.conditions
        if not self.frozen.num_classes or cond is None:
            return None
        if cond.centroids is None:
            return cond.labels[index].to(x.device)
        assert self.ctx is not None
        return cond.assign(eval_features(self.ctx.encoder(), x))

    def fingerprint_modules(self) -> dict[str, nn.Module]:
        return {"unet": self.model if self.model is not None else self.frozen.unet}

    def _to_model_size(self, x: torch.Tensor) -> torch.Tensor:
        """Real images (data.size) at the model's size, for fine-tuning a model of another size."""
        return x if self.frozen.model_size == x.shape[-1] else resize(x, self.frozen.model_size)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": self.kind}
        if self.frozen.pretrained:
            info["pretrained"] = self.frozen.pretrained
        return info

    def _class_meaning(self) -> dict[str, Any]:
        cond, k = self.frozen.conditions, self.frozen.num_classes
        if not self.frozen.num_classes:
            return {"num_classes": 0, "meaning": "unconditional"}
        source = cond.source if cond is not None else "model"
        meaning = {
            "kmeans": f"k-means pseudo-classes of the run's encoder features (k={k}); sample "
            "them with the frequencies in final/conditions.safetensors",
            "labels": "the data set's true labels (conditions.mode=labels)",
            "model": "the pretrained model's own classes (synthkit samples them uniformly)",
        }.get(source, source)
        return {"num_classes": self.frozen.num_classes, "source": source, "meaning": meaning}

    def publish(self, directory: Path) -> dict[str, Any]:
        unet = self.frozen.unet.to("cpu")
        meta = {
            "class_ids": self._class_meaning(),
            "data": {"size": self.frozen.size, "channels": self.frozen.channels},
        }
        if self.frozen.pretrained:
            meta["pretrained"] = self.frozen.pretrained
        save_diffusion(
            unet, DDPMScheduler.from_config(self.frozen.scheduler_config), directory / DIFFUSION_DIR, meta
        )
        record: dict[str, Any] = {
            "kind": self.kind,
            "hashes": {"unet_ema": state_dict_hash(cpu_state(unet))},
            "train_steps": self.frozen.trained_steps,
            "num_classes": self.frozen.num_classes,
            "condition_source": self.frozen.conditions.source if self.frozen.conditions else "none",
            "pools": self.frozen.pools,
            **({"pretrained": self.frozen.pretrained} if self.frozen.pretrained else {}),
        }
        if self.frozen.conditions is not None:
            save_conditions(self.frozen.conditions, directory / "conditions.safetensors")
            record["conditions"] = {
                "num_classes": self.frozen.conditions.num_classes,
                "source": self.frozen.conditions.source,
            }
        return record

    def summary(self) -> dict[str, Any]:
        return {"pools": self.frozen.pools}
