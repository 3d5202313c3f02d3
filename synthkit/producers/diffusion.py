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
   ``RUN/pools/epoch-EEEE`` through the export's writer (``export.write_samples``: one format for pools and
   exports) and every process reads it back through the safe reader;
4. every encoder step draws ``hsg.synthetic_ratio`` x B hard samples and ``hpg.pair_ratio`` x B pairs from
   the pool (a pair: one positive group of four views).

Published: the EMA UNet and its noise schedule in diffusers' layout (``final/diffusion``), the conditions.
Exports sample with DDIM at the end-of-training settings (the full guidance scale, ``t_split_end``).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from torch import nn

from synthkit.config import DiffusionConfig, PipelineConfig, to_dict
from synthkit.data.batches import FIT_EPOCH, REFERENCE_EPOCH, MemoryBatches, MixBatches, sample_images
from synthkit.data.views import to_float
from synthkit.distributed import reduce_values
from synthkit.encoders.model import eval_features
from synthkit.errors import CheckpointError, ModelError, RunError
from synthkit.generators.diffusion import (
    SCHEDULER_DIR,
    UNET_DIR,
    build_scheduler,
    build_unet,
    diffusion_loss,
    load_pretrained,
    save_diffusion,
    to_model_range,
)
from synthkit.producers.base import (
    Chunk,
    Contribution,
    Producer,
    Samples,
    StepInput,
    TrainContext,
    chunk_generator,
    interleave,
)
from synthkit.producers.conditions import (
    Conditions,
    load_conditions,
    num_conditions,
    refresh_conditions,
    refresh_stream_conditions,
    save_conditions,
)
from synthkit.producers.diffusion_sampling import (
    Guidance,
    ddim_pairs,
    ddim_sample,
    guidance_scale_at,
    t_split_at,
)
from synthkit.producers.hard_samples import hsg_lambda
from synthkit.progress import Phase
from synthkit.provenance import state_dict_hash
from synthkit.shards import iter_samples
from synthkit.weights import cpu_state, load_into, load_state_dict, save_state_dict

if TYPE_CHECKING:
    from accelerate import Accelerator

    from synthkit.objectives.scoring import Scorer

HSG_PRODUCER = "hsg-diffusion"
HPG_PRODUCER = "hpg-diffusion"
DIFFUSION_DIR = "diffusion"
POOLS_DIR = "pools"
STATE_JSON = "producer_state.json"
#: unguided samples the naive baseline draws from (made once: a diffusion model cannot sample every step)
NAIVE_POOL = 1024

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


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize (antialiased when shrinking) of N x C x H x W images in [0, 1]."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(
        0, 1
    )


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


class DiffusionProducer(Producer):
    """A conditional UNet (trained in stage 1, or loaded from a run) that makes guided samples and pairs."""

    kind: ClassVar[str] = "diffusion"
    Config: ClassVar[type] = DiffusionConfig

    def __init__(
        self,
        cfg: PipelineConfig,
        channels: int,
        size: int,
        num_classes: int,
        unet: UNet2DModel | None = None,
        scheduler_config: dict | None = None,
    ) -> None:
        d = cfg.generator
        assert isinstance(d, DiffusionConfig)
        self.cfg, self.d = cfg, d
        self.channels, self.size, self.num_classes = channels, size, num_classes
        # the sampler: the EMA weights after stage 1 (or a published model)
        self.unet = unet if unet is not None else build_unet(d, channels, size, num_classes)
        self.unet.eval().requires_grad_(False)
        self.scheduler_config = scheduler_config or dict(build_scheduler(d).config)
        self.conditions: Conditions | None = None
        self.export_kinds = tuple(k for k, on in (("hard", cfg.hsg.enabled), ("pair", cfg.hpg.enabled)) if on)
        # the settings samples are made with; exports use the end-of-training ones
        self.guidance_scale = guidance_scale_at(d, cfg.hsg.lambda_hard) if cfg.hsg.enabled else 0.0
        self.t_split = d.t_split_end
        self.trained_steps = 0
        self.pools: list[dict[str, Any]] = []
        self.ctx: TrainContext | None = None

    # ------------------------------------------------------------------ training
    @classmethod
    def for_training(cls, cfg: PipelineConfig, ctx: TrainContext) -> DiffusionProducer:
        real = ctx.real  # None: real data streamed from shard sets (mix.sources)
        d = cfg.generator
        assert isinstance(d, DiffusionConfig)
        n_cond = num_conditions(
            cfg.conditions, len(real.classes) if real is not None and real.classes else None
        )
        pretrained = _load_pretrained(cfg, ctx.channels, ctx.size, n_cond) if d.pretrained else None
        if pretrained is not None:
            unet, info = pretrained
            n_cond = int(unet.config.num_class_embeds or 0)
            self = cls(
                cfg,
                ctx.channels,
                ctx.size,
                n_cond,
                unet=copy.deepcopy(unet),
                scheduler_config=info.pop("scheduler_config"),
            )
            self.pretrained = info
            # the trainable UNet starts from the pretrained weights; none is needed without stage-1 steps
            self.model = unet if d.train_steps else None
        else:
            self = cls(cfg, ctx.channels, ctx.size, n_cond)
            # the trainable UNet starts from the same weights on every process (the loop seeded them)
            self.model = build_unet(d, ctx.channels, ctx.size, n_cond)
        self.ctx = ctx
        self.ema = (
            EMAModel(
                self.model.parameters(),
                decay=d.ema_decay,
                model_cls=UNet2DModel,
                model_config=self.model.config,
            )
            if self.model is not None
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
        return self

    def prepare(self, accelerator: Accelerator) -> None:
        self.unet.to(accelerator.device)
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
            k = self.num_classes
            self.conditions = Conditions(torch.arange(k), k, "model") if k else None
            self.stage1_done = True
            return
        world, rank = acc.num_processes, acc.process_index
        if d.batch_size % world:
            raise RunError(f"generator.batch_size={d.batch_size} is not divisible by {world} processes")
        batches: MemoryBatches | MixBatches
        if ctx.real is not None:
            self.conditions = refresh_conditions(
                cfg.conditions, acc, ctx.encoder(), ctx.real, None, seed=cfg.train.seed + self.warm,
                num_classes=self.num_classes,
            )  # fmt: skip
            batches = MemoryBatches(
                ctx.real.images, d.batch_size // world, rank, world, seed=cfg.train.seed + 17
            )
        else:  # streamed: k-means on a bounded sample; the UNet reads the stream in batches of its own size
            self.conditions = refresh_stream_conditions(
                cfg.conditions, acc, ctx.encoder(),
                lambda: sample_images(ctx.batches, cfg.conditions.fit_samples, FIT_EPOCH + self.warm),
                None, seed=cfg.train.seed + self.warm, num_classes=self.num_classes,
            )  # fmt: skip
            batches = MixBatches(cfg.mix, d.batch_size // world, rank, world, seed=cfg.train.seed + 17)
        if len(batches) == 0:
            raise RunError(f"the real data hold fewer images than one diffusion batch of {d.batch_size}")
        scheduler = DDPMScheduler.from_config(self.scheduler_config)
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
        self.ema.copy_to(self.unet.parameters())
        self.trained_steps = d.train_steps
        self.stage1_done = True
        # the encoder's randomness afterwards does not depend on how long stage 1 ran
        torch.manual_seed(cfg.train.seed * 1009 + 7919 * (rank + 1) + 1)

    def _refresh_pool(self, epoch: int) -> None:
        """A pool sampled with the current encoder by the main process, read back by every process."""
        from synthkit.export import write_samples
        from synthkit.objectives.scoring import Scorer, reference_batch

        ctx = self.ctx
        assert ctx is not None
        acc, cfg, d = ctx.accelerator, self.cfg, self.d
        progress = (epoch - self.warm) / max(1, cfg.train.epochs - 1 - self.warm)
        self.guidance_scale = guidance_scale_at(d, hsg_lambda(cfg.hsg, epoch + 1)) if cfg.hsg.enabled else 0.0
        self.t_split = t_split_at(d, progress)
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
                detail=f" ({what}; guidance {self.guidance_scale:.3g}, t_split {self.t_split:.3g})",
            ).start()
            res = write_samples(
                pool_dir,
                "pool",
                self,
                scorer,
                self.pool_counts,
                seed=cfg.train.seed * 100_003 + epoch,
                batch_size=d.sample_batch_size,
                maxcount=max(1, d.pool_size // max(1, acc.num_processes)),
                manifest_fields={
                    "config": to_dict(cfg),
                    "producer": {"name": "diffusion-pool", "epoch": epoch},
                },
                progress=phase.update,
            )
            rec: dict[str, Any] = {
                "epoch": epoch,
                "pool_guidance_scale": self.guidance_scale,
                "pool_t_split": self.t_split,
            }
            hard = res.hardness[len(res.hardness) - self.pool_counts["hard"] :]  # pairs come first
            if hard:
                rec["pool_hardness"] = sum(hard) / len(hard)
            if res.pair_similarity:
                rec["pool_pair_similarity"] = sum(res.pair_similarity) / len(res.pair_similarity)
            self.pools.append(rec)
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
        save_state_dict(self.unet, directory / "producer_unet_ema.safetensors")
        if self.conditions is not None:
            save_conditions(self.conditions, directory / "producer_conditions.safetensors")
        run_dir = self.ctx.run_dir if self.ctx is not None else directory
        meta = {
            "stage1_done": self.stage1_done,
            "trained_steps": self.trained_steps,
            "guidance_scale": self.guidance_scale,
            "t_split": self.t_split,
            "pool_dir": None if self.pool_dir is None else self.pool_dir.relative_to(run_dir).as_posix(),
            "pools": self.pools,
            "conditions": None
            if self.conditions is None
            else {"num_classes": self.conditions.num_classes, "source": self.conditions.source},
        }
        (directory / STATE_JSON).write_text(json.dumps(meta, indent=2))

    def checkpoint_layout(self) -> dict[str, nn.Module]:
        return {"producer_unet_ema.safetensors": self.unet}

    def load_state(self, directory: Path) -> None:
        assert self.ctx is not None
        path = directory / STATE_JSON
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            self.stage1_done = bool(meta["stage1_done"])
            self.trained_steps = int(meta["trained_steps"])
            self.guidance_scale, self.t_split = float(meta["guidance_scale"]), float(meta["t_split"])
            self.pools = list(meta["pools"])
            pool_dir, c = meta["pool_dir"], meta["conditions"]
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {e}") from e
        weights = directory / "producer_unet_ema.safetensors"
        load_into(self.unet, load_state_dict(weights), str(weights))
        if c is not None:
            self.conditions = load_conditions(directory / "producer_conditions.safetensors", c)
        if pool_dir is not None:
            if not isinstance(pool_dir, str) or ".." in Path(pool_dir).parts or Path(pool_dir).is_absolute():
                raise CheckpointError(f"{path}: pool_dir {pool_dir!r} is not a pool of this run")
            self.pool_dir = self.ctx.run_dir / pool_dir
            self.pool = read_pool(self.pool_dir)

    def _batch_conditions(self, index: Any, x: torch.Tensor) -> torch.Tensor | None:
        """A real batch's conditions: looked up (in-memory data) or assigned by its features (streamed)."""
        cond = self.conditions
        if not self.num_classes or cond is None:
            return None
        if cond.centroids is None:
            return cond.labels[index].to(x.device)
        assert self.ctx is not None
        return cond.assign(eval_features(self.ctx.encoder(), x))

    def fingerprint_modules(self) -> dict[str, nn.Module]:
        return {"unet": self.model if self.model is not None else self.unet}

    @property
    def model_size(self) -> int:
        return int(self.unet.config.sample_size)

    def _to_model_size(self, x: torch.Tensor) -> torch.Tensor:
        """Real images (data.size) at the model's size, for fine-tuning a model of another size."""
        return x if self.model_size == x.shape[-1] else _resize(x, self.model_size)

    def _to_data_size(self, x: torch.Tensor) -> torch.Tensor:
        """Samples (the model's size) at data.size; differentiable, so guidance can look through it."""
        return x if x.shape[-1] == self.size else _resize(x, self.size)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": self.kind}
        if getattr(self, "pretrained", None):
            info["pretrained"] = self.pretrained
        return info

    def _class_meaning(self) -> dict[str, Any]:
        cond = self.conditions
        if not self.num_classes:
            return {"num_classes": 0, "meaning": "unconditional"}
        source = cond.source if cond is not None else "model"
        meaning = {
            "kmeans": f"k-means pseudo-classes of the run's encoder features (k={self.num_classes}); sample "
            "them with the frequencies in final/conditions.safetensors",
            "labels": "the data set's true labels (conditions.mode=labels)",
            "model": "the pretrained model's own classes (synthkit samples them uniformly)",
        }.get(source, source)
        return {"num_classes": self.num_classes, "source": source, "meaning": meaning}

    def publish(self, directory: Path) -> dict[str, Any]:
        unet = self.unet.to("cpu")
        meta = {"class_ids": self._class_meaning(), "data": {"size": self.size, "channels": self.channels}}
        if getattr(self, "pretrained", None):
            meta["pretrained"] = self.pretrained
        save_diffusion(
            unet, DDPMScheduler.from_config(self.scheduler_config), directory / DIFFUSION_DIR, meta
        )
        record: dict[str, Any] = {
            "kind": self.kind,
            "hashes": {"unet_ema": state_dict_hash(cpu_state(unet))},
            "train_steps": self.trained_steps,
            "num_classes": self.num_classes,
            "condition_source": self.conditions.source if self.conditions else "none",
            "pools": self.pools,
            **({"pretrained": self.pretrained} if getattr(self, "pretrained", None) else {}),
        }
        if self.conditions is not None:
            save_conditions(self.conditions, directory / "conditions.safetensors")
            record["conditions"] = {
                "num_classes": self.conditions.num_classes,
                "source": self.conditions.source,
            }
        return record

    def summary(self) -> dict[str, Any]:
        return {"pools": self.pools}

    # ------------------------------------------------------------------ export
    @classmethod
    def load(cls, cfg: PipelineConfig, directory: Path, record: dict[str, Any]) -> DiffusionProducer:
        root = directory / DIFFUSION_DIR
        if not (root / UNET_DIR / "config.json").is_file():
            raise CheckpointError(f"{directory} holds no diffusers UNet ({root / UNET_DIR} is missing)")
        try:
            unet = UNet2DModel.from_pretrained(root / UNET_DIR, use_safetensors=True, local_files_only=True)
            scheduler = DDPMScheduler.from_pretrained(root / SCHEDULER_DIR)
        except (OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"cannot load the UNet in {root}: {type(e).__name__}: {e}") from e
        expected = record.get("hashes", {}).get("unet_ema")
        state = cpu_state(unet)
        if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
            raise CheckpointError(f"{root / UNET_DIR} holds non-finite weights: a diverged UNet is refused")
        found = state_dict_hash(state)
        if found != expected:
            raise CheckpointError(
                f"{root / UNET_DIR} does not hold the UNet this run recorded (content hash {found[:12]}, "
                f"recorded {str(expected)[:12]}); it was replaced or damaged"
            )
        # the producer makes images of the run's data size (a resized pretrained model: its samples resized)
        self = cls(
            cfg,
            int(unet.config.in_channels),
            cfg.data.size,
            int(record.get("num_classes") or 0),
            unet=unet,
            scheduler_config=dict(scheduler.config),
        )
        if record.get("pretrained"):
            self.pretrained = record["pretrained"]
        cond = record.get("conditions")
        if cond is not None:
            self.conditions = load_conditions(directory / "conditions.safetensors", cond)
        self.trained_steps = int(record.get("train_steps", 0))
        self.pools = list(record.get("pools", []))
        return self

    def draw_conditions(self, k: int, g: torch.Generator) -> torch.Tensor | None:
        cond = self.conditions
        return cond.sample(k, generator=g) if cond is not None and cond.num_classes else None

    @torch.no_grad()
    def make(self, kind: str, start: int, count: int, seed: int, scorer: Scorer) -> Samples:
        if kind not in self.export_kinds:
            raise ValueError(f"this diffusion run makes no {kind} samples")
        d, device = self.d, next(self.unet.parameters()).device
        k = count if kind == "hard" else count // 2
        g = chunk_generator(seed, kind, start, device=device)
        labels = self.draw_conditions(k, g)
        cond = self.conditions
        base = {
            "condition_source": cond.source if cond else "none",
            "condition_k": cond.num_classes if cond and cond.source == "kmeans" else None,
        }
        if kind == "hard":
            guidance = (
                Guidance(scorer, self.guidance_scale, d.guidance_schedule, prepare=self._to_data_size)
                if self.guidance_scale > 0
                else None
            )
            images = ddim_sample(
                self.unet,
                self.scheduler_config,
                labels,
                generator=g,
                steps=d.ddim_steps,
                eta=d.ddim_eta,
                n=k,
                guidance=guidance,
            )
            meta = [
                {
                    **base,
                    "producer": HSG_PRODUCER,
                    "condition": None if labels is None else int(labels[j]),
                    "guidance_scale": self.guidance_scale,
                }
                for j in range(k)
            ]
        else:
            x_a, x_b = ddim_pairs(
                self.unet,
                self.scheduler_config,
                labels,
                t_split=self.t_split,
                generator=g,
                steps=d.ddim_steps,
                eta=d.ddim_eta,
                mode=d.branch_mode,
                branch_eta=d.branch_eta,
                n=k,
            )
            images = interleave(x_a, x_b)
            meta = [
                {
                    **base,
                    "producer": HPG_PRODUCER,
                    "condition": None if labels is None else int(labels[j // 2]),
                    "pair_id": (start + j) // 2,
                    "t_split": round(self.t_split, 6),
                    "branch_mode": d.branch_mode,
                    "guidance_scale": 0.0,  # pairs are sampled unguided
                }
                for j in range(count)
            ]
        return Samples(self._to_data_size(images).float().cpu(), meta)

    def export_info(self) -> dict[str, Any]:
        d, cond = self.d, self.conditions
        return {
            "generator_step": self.trained_steps,
            "condition_source": cond.source if cond else "none",
            "sampler": f"DDIM {d.ddim_steps} steps, eta {d.ddim_eta}",
            "guidance_scale": self.guidance_scale,
            "t_split": self.t_split,
            "branch_mode": d.branch_mode,
            **({"pretrained": self.pretrained} if getattr(self, "pretrained", None) else {}),
        }

    @torch.no_grad()
    def naive_pool(self, seed: int, device: torch.device) -> torch.Tensor:
        """The naive baseline's NAIVE_POOL unguided samples for ``seed`` (the same images every time): what
        a naive run with ``train.seed=seed`` trains on, so that it can be audited afterwards."""
        self.unet.to(device)
        g = chunk_generator(seed, "naive", 0, device=device)
        with Phase("sampling the naive baseline's pool", NAIVE_POOL, "img", progress=False, logger=logger):
            return ddim_sample(
                self.unet,
                self.scheduler_config,
                self.draw_conditions(NAIVE_POOL, g),
                generator=g,
                steps=self.d.ddim_steps,
                eta=self.d.ddim_eta,
                n=NAIVE_POOL,
            )

    def sampler(self, seed: int) -> Callable[[int, torch.device], torch.Tensor]:
        """Unguided samples for the naive baseline: the pool of :meth:`naive_pool`, made once, from which
        every step draws with the global generator."""
        pool: list[torch.Tensor] = []

        def sample(n: int, device: torch.device) -> torch.Tensor:
            if not pool:
                pool.append(self.naive_pool(seed, device))
            return pool[0][torch.randint(len(pool[0]), (n,))].to(device)

        return sample
