"""The frozen diffusion model of a finished run: guided hard samples and branched pairs by DDIM.

docs/method.md, "The same two producers with diffusion". ``final/diffusion`` holds the EMA UNet and its
noise schedule in diffusers' layout, ``final/conditions.safetensors`` the conditions (the trainer,
``producers/diffusion.py``, publishes them through :meth:`DiffusionSampler.publish`). A sampler makes hard
samples with encoder guidance of strength ``settings.guidance_scale``
(:func:`~synthkit.samplers.diffusion_sampling.guidance_scale_at`) and pairs branched at
``settings.t_split``; exports use the end-of-training settings, the trainer's pools the settings of their
epoch (:meth:`DiffusionSampler.at`). A sampler is also what a pretrained diffusers model
(``generator.pretrained``) is, sampled as it is or fine-tuned from (:meth:`DiffusionSampler.pretrained`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from synthkit.config import PipelineConfig
from synthkit.errors import CheckpointError, ModelError
from synthkit.generators.diffusion import (
    SCHEDULER_DIR,
    UNET_DIR,
    build_scheduler,
    build_unet,
    load_pretrained,
    save_diffusion,
)
from synthkit.producer_configs.diffusion import DiffusionConfig
from synthkit.progress import Phase
from synthkit.provenance import state_dict_hash
from synthkit.samplers.base import Sampler, Samples, chunk_generator, interleave
from synthkit.samplers.conditions import Conditions, load_conditions, save_conditions
from synthkit.samplers.diffusion_sampling import Guidance, ddim_pairs, ddim_sample, guidance_scale_at
from synthkit.weights import cpu_state

if TYPE_CHECKING:
    from synthkit.objectives.scoring import Scorer

HSG_PRODUCER = "hsg-diffusion"
HPG_PRODUCER = "hpg-diffusion"
DIFFUSION_DIR = "diffusion"
#: unguided samples the naive baseline draws from (made once: a diffusion model cannot sample every step)
NAIVE_POOL = 1024

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """What samples are made with: the guidance strength of hard samples and the branching point of pairs."""

    guidance_scale: float
    t_split: float

    @classmethod
    def final(cls, cfg: PipelineConfig) -> Settings:
        """The end-of-training settings (exports): full guidance (lambda_hard at the end of its ramp) and
        ``t_split_end``."""
        d = cfg.generator
        assert isinstance(d, DiffusionConfig)
        return cls(guidance_scale_at(d, cfg.hsg.lambda_hard) if cfg.hsg.enabled else 0.0, d.t_split_end)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize (antialiased when shrinking) of N x C x H x W images in [0, 1]."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(
        0, 1
    )


class DiffusionSampler(Sampler):
    """A conditional UNet (EMA weights) and its noise schedule, sampled with DDIM."""

    kind: ClassVar[str] = "diffusion"

    def __init__(
        self,
        cfg: PipelineConfig,
        channels: int,
        size: int,
        num_classes: int,
        unet: UNet2DModel | None = None,
        scheduler_config: dict | None = None,
        *,
        pretrained: dict[str, Any] | None = None,
    ) -> None:
        d = cfg.generator
        assert isinstance(d, DiffusionConfig)
        self.cfg, self.d = cfg, d
        self.channels, self.size, self.num_classes = channels, size, num_classes
        self.unet = unet if unet is not None else build_unet(d, channels, size, num_classes)
        self.unet.eval().requires_grad_(False)
        self.scheduler_config = scheduler_config or dict(build_scheduler(d).config)
        self.pretrained = pretrained  # where a pretrained model came from (None: trained by the run)
        self.conditions: Conditions | None = None
        self.export_kinds = tuple(k for k, on in (("hard", cfg.hsg.enabled), ("pair", cfg.hpg.enabled)) if on)
        self.settings = Settings.final(cfg)
        self.trained_steps = 0
        self.pools: list[dict[str, Any]] = []

    def at(self, settings: Settings) -> DiffusionSampler:
        """This sampler (the same UNet and conditions) making samples with ``settings``."""
        other = copy.copy(self)
        other.settings = settings
        return other

    @property
    def guidance_scale(self) -> float:
        return self.settings.guidance_scale

    @property
    def t_split(self) -> float:
        return self.settings.t_split

    @property
    def model_size(self) -> int:
        return int(self.unet.config.sample_size)

    def to_data_size(self, x: torch.Tensor) -> torch.Tensor:
        """Samples (the model's size) at data.size; differentiable, so guidance can look through it."""
        return x if x.shape[-1] == self.size else resize(x, self.size)

    @classmethod
    def load(cls, cfg: PipelineConfig, directory: Path, record: dict[str, Any]) -> DiffusionSampler:
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
        # the sampler makes images of the run's data size (a resized pretrained model: its samples resized)
        self = cls(
            cfg,
            int(unet.config.in_channels),
            cfg.data.size,
            int(record.get("num_classes") or 0),
            unet=unet,
            scheduler_config=dict(scheduler.config),
            pretrained=record.get("pretrained") or None,
        )
        cond = record.get("conditions")
        if cond is not None:
            self.conditions = load_conditions(directory / "conditions.safetensors", cond)
        self.trained_steps = int(record.get("train_steps", 0))
        self.pools = list(record.get("pools", []))
        return self

    @classmethod
    def pretrained(
        cls, cfg: PipelineConfig, channels: int, size: int, n_cond: int
    ) -> tuple[DiffusionSampler, UNet2DModel]:
        """``generator.pretrained``, loaded (safetensors only, never downloaded) and checked against the data
        (``n_cond``: the run's conditions, which fine-tuning re-learns): the frozen sampler, on its own copy
        of the UNet, and the UNet as loaded, which fine-tuning starts from."""
        d = cfg.generator
        assert isinstance(d, DiffusionConfig) and d.pretrained is not None
        found = load_pretrained(d.pretrained, default_scheduler=d)
        unet = found.unet
        unfit = _pretrained_unfit(unet, d, channels, size, n_cond)
        if unfit:
            raise ModelError(f"generator.pretrained={d.pretrained} {unfit}")
        s, k = unet.config.sample_size, int(unet.config.num_class_embeds or 0)
        info = {
            "path": str(Path(d.pretrained).resolve()),
            "layout": found.layout,
            "scheduler": found.scheduler_source,
            "hash": state_dict_hash(cpu_state(unet)),
            "size": int(s),
            "resized_to": size if s != size else None,
            "fine_tune_steps": d.train_steps,
            "num_classes": k,
        }
        frozen = cls(
            cfg, channels, size, k, unet=copy.deepcopy(unet), scheduler_config=found.scheduler_config,
            pretrained=info,
        )  # fmt: skip
        return frozen, unet

    def draw_conditions(self, k: int, g: torch.Generator) -> torch.Tensor | None:
        cond = self.conditions
        return cond.sample(k, generator=g) if cond is not None and cond.num_classes else None

    @torch.no_grad()
    def make(self, kind: str, start: int, count: int, seed: int, scorer: Scorer) -> Samples:
        if kind not in self.export_kinds:
            raise ValueError(f"this diffusion run makes no {kind} samples")
        device = next(self.unet.parameters()).device
        k = count if kind == "hard" else count // 2
        g = chunk_generator(seed, kind, start, device=device)
        labels = self.draw_conditions(k, g)
        cond = self.conditions
        base = {
            "condition_source": cond.source if cond else "none",
            "condition_k": cond.num_classes if cond and cond.source == "kmeans" else None,
        }
        if kind == "hard":
            images, meta = self._hard(labels, g, k, base, scorer)
        else:
            images, meta = self._pairs(labels, g, k, start, base)
        return Samples(self.to_data_size(images).float().cpu(), meta)

    def _hard(
        self, labels: torch.Tensor | None, g: torch.Generator, k: int, base: dict[str, Any], scorer: Scorer
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        d, scale = self.d, self.guidance_scale
        guidance = (
            Guidance(scorer, scale, d.guidance_schedule, prepare=self.to_data_size) if scale > 0 else None
        )
        images = ddim_sample(
            self.unet, self.scheduler_config, labels, generator=g, steps=d.ddim_steps, eta=d.ddim_eta, n=k,
            guidance=guidance,
        )  # fmt: skip
        meta = [
            {
                **base,
                "producer": HSG_PRODUCER,
                "condition": None if labels is None else int(labels[j]),
                "guidance_scale": scale,
            }
            for j in range(k)
        ]
        return images, meta

    def _pairs(
        self, labels: torch.Tensor | None, g: torch.Generator, k: int, start: int, base: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        d = self.d
        x_a, x_b = ddim_pairs(
            self.unet, self.scheduler_config, labels, t_split=self.t_split, generator=g, steps=d.ddim_steps,
            eta=d.ddim_eta, mode=d.branch_mode, branch_eta=d.branch_eta, n=k,
        )  # fmt: skip
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
            for j in range(2 * k)
        ]
        return interleave(x_a, x_b), meta

    def export_info(self) -> dict[str, Any]:
        d, cond = self.d, self.conditions
        return {
            "generator_step": self.trained_steps,
            "condition_source": cond.source if cond else "none",
            "sampler": f"DDIM {d.ddim_steps} steps, eta {d.ddim_eta}",
            "guidance_scale": self.guidance_scale,
            "t_split": self.t_split,
            "branch_mode": d.branch_mode,
            **({"pretrained": self.pretrained} if self.pretrained else {}),
        }

    def class_ids(self) -> dict[str, Any]:
        """What the class ids of the published model mean (``synthkit.json``)."""
        cond, k = self.conditions, self.num_classes
        if not k:
            return {"num_classes": 0, "meaning": "unconditional"}
        source = cond.source if cond is not None else "model"
        meaning = {
            "kmeans": f"k-means pseudo-classes of the run's encoder features (k={k}); sample "
            "them with the frequencies in final/conditions.safetensors",
            "labels": "the data set's true labels (conditions.mode=labels)",
            "model": "the pretrained model's own classes (synthkit samples them uniformly)",
        }.get(source, source)
        return {"num_classes": k, "source": source, "meaning": meaning}

    def publish(self, directory: Path) -> dict[str, Any]:
        """Write the UNet (moved to the CPU) and its noise schedule in diffusers' layout, with what its class
        ids mean, and the conditions into ``directory`` (a run's ``final/``); return the record ``load`` reads
        them back with (the trainer adds its kind)."""
        unet = self.unet.to("cpu")
        meta = {"class_ids": self.class_ids(), "data": {"size": self.size, "channels": self.channels}}
        if self.pretrained:
            meta["pretrained"] = self.pretrained
        save_diffusion(
            unet, DDPMScheduler.from_config(self.scheduler_config), directory / DIFFUSION_DIR, meta
        )
        record: dict[str, Any] = {
            "hashes": {"unet_ema": state_dict_hash(cpu_state(unet))},
            "train_steps": self.trained_steps,
            "num_classes": self.num_classes,
            "condition_source": self.conditions.source if self.conditions else "none",
            "pools": self.pools,
            **({"pretrained": self.pretrained} if self.pretrained else {}),
        }
        if self.conditions is not None:
            record["conditions"] = save_conditions(self.conditions, directory / "conditions.safetensors")
        return record

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


def _pretrained_unfit(
    unet: UNet2DModel, d: DiffusionConfig, channels: int, size: int, n_cond: int
) -> str | None:
    """Why a pretrained UNet cannot serve this run (its data, ``generator.resize``, fine-tuning to ``n_cond``
    conditions), or None."""
    c_in, c_out, s = unet.config.in_channels, unet.config.out_channels, unet.config.sample_size
    embed, k = unet.config.class_embed_type, int(unet.config.num_class_embeds or 0)
    rows = (
        (
            c_in != channels or c_out != channels,
            f"makes {c_out}-channel images from {c_in}-channel inputs, the data have {channels} channels "
            "(data.channels)",
        ),
        (
            s != size and not d.resize,
            f"makes {s} px images but data.size is {size}; set --data.size={s}, or --generator.resize=true "
            "to resize its samples (recorded in every output)",
        ),
        (
            embed is not None,
            f"uses class_embed_type={embed!r}; synthkit conditions through num_class_embeds only",
        ),
        (
            bool(d.train_steps and k and k != n_cond),
            f"has {k} classes; fine-tuning it (generator.train_steps={d.train_steps}) re-learns them as this "
            f"run's {n_cond} conditions: set conditions.k={k} (or generator.train_steps=0 to sample its own "
            "classes)",
        ),
    )
    return next((message for unfit, message in rows if unfit), None)
