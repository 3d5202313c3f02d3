"""A pool of diffusion-made hard samples and positive pairs, written as a shard set.

Both the joint loop (a fresh pool every ``diffusion.refresh_every`` epochs, guided by the current encoder)
and ``synthkit generate`` for diffusion runs write through :func:`write_pool`, so a pool the loop trained on
and an exported set have one format (``shards/README.md``): ``hard`` samples with their ``hardness``, and
``pair_a``/``pair_b`` samples linked by ``pair_id`` with ``pair_similarity`` and ``t_split``.

Every chunk of ``sample_batch_size`` samples has its own seed (derived from the pool's seed and the chunk's
first index), so a chunk can be recomputed alone: that is how an interrupted export resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthkit.config import DiffusionConfig
from synthkit.data.views import Views
from synthkit.producers.conditions import Conditions
from synthkit.producers.diffusion_sampling import (
    Guidance,
    contrastive_hardness,
    ddim_pairs,
    ddim_sample,
    pair_similarity,
)
from synthkit.shards import ShardSetWriter, iter_samples

HARD_PRODUCER = "hsg-diffusion"
PAIR_PRODUCER = "hpg-diffusion"
_PAIR_SEED_OFFSET = 7_777_777


@dataclass
class DiffusionProducer:
    """A trained conditional UNet (EMA weights), its noise schedule and the condition frequencies."""

    unet: torch.nn.Module
    scheduler_config: dict
    conditions: Conditions | None
    cfg: DiffusionConfig
    step: int = 0

    @property
    def num_classes(self) -> int:
        return self.conditions.num_classes if self.conditions is not None else 0

    def draw_conditions(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        return self.conditions.sample(n, generator=generator) if self.num_classes else None


@dataclass
class Scorer:
    """The encoder (eval mode), its views and the fixed real reference batch that hardness is measured in."""

    encoder: torch.nn.Module
    views: Views
    reference: torch.Tensor
    temperature: float

    def guidance(self, scale: float, schedule: str) -> Guidance:
        return Guidance(self.encoder, self.views, self.reference, self.temperature, scale, schedule)

    @torch.no_grad()
    def hardness(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return contrastive_hardness(self.encoder, self.views, images, self.reference, self.temperature)


@dataclass
class PoolResult:
    manifest: dict[str, Any]
    hardness: list[float] = field(default_factory=list)
    pair_similarity: list[float] = field(default_factory=list)
    conditions: list[int] = field(default_factory=list)
    previews: list[np.ndarray] = field(default_factory=list)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def chunk_seed(seed: int, start: int, pairs: bool) -> int:
    return seed * 1_000_003 + start + (_PAIR_SEED_OFFSET if pairs else 0)


def write_pool(
    out_dir: str | Path,
    name: str,
    producer: DiffusionProducer,
    scorer: Scorer,
    *,
    n_hard: int,
    n_pairs: int,
    seed: int,
    guidance_scale: float,
    t_split: float,
    maxcount: int = 1000,
    manifest_fields: dict[str, Any] | None = None,
    resume: bool = False,
    previews: int = 0,
    progress: Callable[[int], None] | None = None,
) -> PoolResult:
    """Sample ``n_hard`` guided hard samples and ``n_pairs`` branched pairs; write them as one shard set.

    Keys are ``NAME_%08d`` in write order: the hard samples first, then pair members a, b, a, b, ...
    ``previews`` keeps the first images (in write order) for a preview grid. With ``resume=True`` the
    writer's durable prefix is kept and only the chunks after it are sampled.
    """
    cfg = producer.cfg
    c = producer.conditions
    source = c.source if c is not None else "none"
    base = {
        "generator_step": int(producer.step),
        "seed": seed,
        "condition_source": source,
        "condition_k": c.num_classes if c is not None and source == "kmeans" else None,
    }
    result = PoolResult({})
    bs = cfg.sample_batch_size
    device = next(producer.unet.parameters()).device
    with ShardSetWriter(
        out_dir, name, maxcount=maxcount, manifest_fields=manifest_fields or {}, resume=resume
    ) as w:
        done = w.resume_from
        index = 0

        def emit(image: np.ndarray, meta: dict[str, Any]) -> None:
            nonlocal index
            if index >= done:
                w.write(f"{name}_{index:08d}", image, {**base, **meta})
                if progress is not None:
                    progress(1)
            if index < previews:
                result.previews.append(image)
            index += 1

        for start in range(0, n_hard, bs):
            m = min(bs, n_hard - start)
            if start + m <= done and start >= previews:  # durable, and none of it is in the preview
                index += m
                continue
            g = torch.Generator(device=device).manual_seed(chunk_seed(seed, start, pairs=False))
            labels = producer.draw_conditions(m, g)
            guidance = scorer.guidance(guidance_scale, cfg.guidance_schedule) if guidance_scale > 0 else None
            images = ddim_sample(
                producer.unet,
                producer.scheduler_config,
                labels,
                generator=g,
                steps=cfg.ddim_steps,
                eta=cfg.ddim_eta,
                n=m,
                guidance=guidance,
            )
            hard = scorer.hardness(images, chunk_seed(seed, start, pairs=False))
            arrays = _to_uint8(images)
            for j in range(m):
                cond = None if labels is None else int(labels[j])
                meta = {
                    "kind": "hard",
                    "producer": HARD_PRODUCER,
                    "latent_id": start + j,
                    "condition": cond,
                    "hardness": round(float(hard[j]), 6),
                    "guidance_scale": guidance_scale,
                }
                result.hardness.append(meta["hardness"])
                result.conditions.append(-1 if cond is None else cond)
                emit(arrays[j], meta)
        for start in range(0, n_pairs, bs):
            m = min(bs, n_pairs - start)
            if n_hard + 2 * (start + m) <= done and n_hard + 2 * start >= previews:
                index += 2 * m
                continue
            g = torch.Generator(device=device).manual_seed(chunk_seed(seed, start, pairs=True))
            labels = producer.draw_conditions(m, g)
            x_a, x_b = ddim_pairs(
                producer.unet,
                producer.scheduler_config,
                labels,
                t_split=t_split,
                generator=g,
                steps=cfg.ddim_steps,
                eta=cfg.ddim_eta,
                mode=cfg.branch_mode,
                branch_eta=cfg.branch_eta,
                n=m,
            )
            sim = pair_similarity(scorer.encoder, x_a, x_b)
            hard = scorer.hardness(torch.cat([x_a, x_b]), chunk_seed(seed, start, pairs=True))
            arr_a, arr_b = _to_uint8(x_a), _to_uint8(x_b)
            for j in range(m):
                cond = None if labels is None else int(labels[j])
                pair = {
                    "producer": PAIR_PRODUCER,
                    "pair_id": start + j,
                    "latent_id": start + j,
                    "condition": cond,
                    "pair_similarity": round(float(sim[j]), 6),
                    "t_split": round(t_split, 6),
                    "branch_mode": cfg.branch_mode,
                }
                result.pair_similarity.append(pair["pair_similarity"])
                result.conditions.extend([-1 if cond is None else cond] * 2)
                emit(arr_a[j], {**pair, "kind": "pair_a", "hardness": round(float(hard[j]), 6)})
                emit(arr_b[j], {**pair, "kind": "pair_b", "hardness": round(float(hard[m + j]), 6)})
        result.manifest = w.close()
    return result


@dataclass
class Pool:
    """A pool read back for training: hard images and pair images (uint8, N x C x H x W)."""

    hard: torch.Tensor
    pair_a: torch.Tensor
    pair_b: torch.Tensor


def read_pool(directory: str | Path) -> Pool:
    """Read a pool through synthkit's safe reader; pairs are matched by ``pair_id``."""
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
