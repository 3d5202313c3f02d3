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
   exports) and every process reads it back through the safe reader (``diffusion_pools.py``);
4. every encoder step draws ``hsg.synthetic_ratio`` x B hard samples and ``hpg.pair_ratio`` x B pairs from
   the pool (a pair: one positive group of four views).

Published: the EMA UNet and its noise schedule in diffusers' layout (``final/diffusion``), the conditions;
read back as the frozen sampler of ``samplers/diffusion.py``, which exports sample with DDIM at the
end-of-training settings (the full guidance strength, ``t_split_end``). The trainer builds on that sampler:
its pools are made by it at each pool's settings, and a pretrained model is loaded as one
(:meth:`~synthkit.samplers.diffusion.DiffusionSampler.pretrained`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from torch import nn

from synthkit.config import PipelineConfig
from synthkit.data.batches import MemoryBatches, MixBatches
from synthkit.data.views import to_float
from synthkit.distributed import reduce_values
from synthkit.errors import CheckpointError, RunError
from synthkit.generators.diffusion import build_unet, diffusion_loss, to_model_range
from synthkit.producer_configs.diffusion import DiffusionConfig
from synthkit.producers.base import Contribution, Producer, StepInput, TrainContext
from synthkit.producers.conditions import RunConditions, num_conditions
from synthkit.producers.diffusion_pools import Pools
from synthkit.producers.hard_samples import hsg_lambda
from synthkit.progress import Phase
from synthkit.samplers.conditions import Conditions, load_conditions, save_conditions
from synthkit.samplers.diffusion import DiffusionSampler, Settings, resize
from synthkit.samplers.diffusion_sampling import guidance_scale_at, t_split_at
from synthkit.weights import load_into, load_state_dict, save_state_dict

if TYPE_CHECKING:
    from accelerate import Accelerator

STATE_JSON = "producer_state.json"

logger = logging.getLogger(__name__)


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
        b_hard = ctx.per_step(cfg.hsg.synthetic_ratio) if cfg.hsg.enabled else 0
        b_pair = ctx.per_step(cfg.hpg.pair_ratio) if cfg.hpg.enabled else 0
        self.pools = Pools(ctx, b_hard, b_pair, logger)
        self.conditions = RunConditions(cfg, ctx, frozen.num_classes)
        self.stage1_done = False

    @classmethod
    def for_training(cls, cfg: PipelineConfig, ctx: TrainContext) -> DiffusionProducer:
        real = ctx.real  # None: real data streamed from shard sets (mix.sources)
        d = cfg.generator
        assert isinstance(d, DiffusionConfig)
        n_cond = num_conditions(
            cfg.conditions, len(real.classes) if real is not None and real.classes else None
        )
        if d.pretrained:
            frozen, unet = DiffusionSampler.pretrained(cfg, ctx.channels, ctx.size, n_cond)
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
        self.pools.clear_stale()

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
        acc, d, cfg = ctx.accelerator, self.d, self.cfg
        if self.model is None:
            k = self.frozen.num_classes
            self.frozen.conditions = Conditions(torch.arange(k), k, "model") if k else None
            self.stage1_done = True
            return
        world, rank = acc.num_processes, acc.process_index
        if d.batch_size % world:
            raise RunError(f"generator.batch_size={d.batch_size} is not divisible by {world} processes")
        self.frozen.conditions = self.conditions.fit(self.warm, None)
        batches: MemoryBatches | MixBatches
        if ctx.real is not None:
            batches = MemoryBatches(
                ctx.real.images, d.batch_size // world, rank, world, seed=cfg.train.seed + 17
            )
        else:  # streamed: the UNet reads the stream in batches of its own size
            batches = MixBatches(cfg.mix, d.batch_size // world, rank, world, seed=cfg.train.seed + 17)
        if len(batches) == 0:
            raise RunError(f"the real data hold fewer images than one diffusion batch of {d.batch_size}")
        self._train_unet(batches)
        self.frozen.trained_steps = d.train_steps
        self.stage1_done = True
        # the encoder's randomness afterwards does not depend on how long stage 1 ran
        torch.manual_seed(cfg.train.seed * 1009 + 7919 * (rank + 1) + 1)

    def _train_unet(self, batches: MemoryBatches | MixBatches) -> None:
        """``generator.train_steps`` steps of the DDPM objective on ``batches``; the sampler gets the EMA."""
        ctx, d, cfg = self.ctx, self.d, self.cfg
        acc = ctx.accelerator
        scheduler = DDPMScheduler.from_config(self.frozen.scheduler_config)
        g = torch.Generator(device=acc.device).manual_seed(
            cfg.train.seed * 1009 + 7919 * (acc.process_index + 1)
        )
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
                c = self.conditions.of_batch(self.frozen.conditions, idx, x)
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

    def _refresh_pool(self, epoch: int) -> None:
        """A pool sampled with the current encoder at this epoch's settings (``diffusion_pools.py``)."""
        cfg, d = self.cfg, self.d
        progress = (epoch - self.warm) / max(1, cfg.train.epochs - 1 - self.warm)
        self.pool_settings = Settings(
            guidance_scale_at(d, hsg_lambda(cfg.hsg, epoch + 1)) if cfg.hsg.enabled else 0.0,
            t_split_at(d, progress),
        )
        rec = self.pools.refresh(epoch, self.frozen.at(self.pool_settings))
        if rec is not None:
            self.frozen.pools.append(rec)

    def contribute(self, batch: StepInput) -> Contribution | None:
        chunks = self.pools.chunks(batch)
        return Contribution(chunks) if chunks else None

    def save_state(self, directory: Path) -> None:
        save_state_dict(self.frozen.unet, directory / "producer_unet_ema.safetensors")
        cond = self.frozen.conditions
        meta = {
            "stage1_done": self.stage1_done,
            "trained_steps": self.frozen.trained_steps,
            "guidance_scale": self.pool_settings.guidance_scale,
            "t_split": self.pool_settings.t_split,
            "pool_dir": self.pools.state(),
            "pools": self.frozen.pools,
            "conditions": None
            if cond is None
            else save_conditions(cond, directory / "producer_conditions.safetensors"),
        }
        (directory / STATE_JSON).write_text(json.dumps(meta, indent=2))

    def checkpoint_layout(self) -> dict[str, nn.Module]:
        return {"producer_unet_ema.safetensors": self.frozen.unet}

    def load_state(self, directory: Path) -> None:
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
        self.pools.restore(pool_dir, path)

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

    def publish(self, directory: Path) -> dict[str, Any]:
        return {"kind": self.kind, **self.frozen.publish(directory)}

    def summary(self) -> dict[str, Any]:
        return {"pools": self.frozen.pools}
