"""The diffusion trainer's pools: synthetic samples made every few epochs, drawn from by every encoder step.

docs/method.md, "The same two producers with diffusion". Sampling a diffusion model costs tens of UNet passes
per image, so the trainer (``producers/diffusion.py``) refreshes a pool instead of sampling every step: the
main process samples ``generator.pool_size`` images with the current encoder (hard samples and pair members
in the proportion a step draws them), writes them as the shard set ``RUN/pools/epoch-EEEE`` through the
export's writer (``samplers/write.py``: one format for pools and exports) and every process reads the set
back through the safe reader. Each encoder step then draws ``hsg.synthetic_ratio`` x B hard samples and
``hpg.pair_ratio`` x B pairs (a pair: one positive group of four views) from the newest pool.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from synthkit.config import to_dict
from synthkit.data.batches import REFERENCE_EPOCH, sample_images
from synthkit.data.views import to_float
from synthkit.errors import CheckpointError
from synthkit.objectives.scoring import Scorer, reference_batch
from synthkit.producer_configs.diffusion import DiffusionConfig
from synthkit.producers.base import Chunk, StepInput, TrainContext
from synthkit.progress import Phase
from synthkit.samplers.write import SetEvents, SetPlan, WriteResult, write_samples
from synthkit.shards import iter_samples

if TYPE_CHECKING:
    import logging

    from synthkit.samplers.diffusion import DiffusionSampler

POOLS_DIR = "pools"


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


class _PoolProgress(SetEvents):
    def __init__(self, phase: Phase) -> None:
        self.phase = phase

    def made(self, n: int) -> None:
        self.phase.update(n)


class Pools:
    """The pools of one run: ``counts`` samples of each kind a pool, ``b_hard`` hard samples and ``b_pair``
    pairs drawn by a step (0: that producer is off); the newest pool (``current``) and its directory."""

    def __init__(self, ctx: TrainContext, b_hard: int, b_pair: int, logger: logging.Logger) -> None:
        d = ctx.cfg.generator
        assert isinstance(d, DiffusionConfig)
        self.ctx, self.d, self.b_hard, self.b_pair, self.logger = ctx, d, b_hard, b_pair, logger
        # the pool holds hard samples and pair members in the proportion a step draws them
        n_pairs = round(d.pool_size * b_pair / (b_hard + 2 * b_pair))
        self.counts = {"hard": d.pool_size - 2 * n_pairs if b_hard else 0, "pair": 2 * n_pairs}
        self.current: Pool | None = None
        self.dir: Path | None = None

    def clear_stale(self) -> None:
        """Delete the run's pools but the current one (every process waits for the main one).

        Pools of epochs after the checkpoint (or all, on a fresh start) are made again; they are
        deterministic, and deleting them keeps a rerun from reading a pool an aborted attempt left."""
        acc = self.ctx.accelerator
        if acc.is_main_process:
            root = self.ctx.run_dir / POOLS_DIR
            keep = {self.dir.name} if self.dir is not None else set()
            for path in sorted(root.glob("epoch-*")) if root.is_dir() else []:
                if path.name not in keep:
                    shutil.rmtree(path)
        acc.wait_for_everyone()

    def refresh(self, epoch: int, sampler: DiffusionSampler) -> dict[str, Any] | None:
        """The pool of ``epoch``, sampled with ``sampler`` under the current encoder by the main process and
        read back by every process; its record (settings, mean hardness and pair similarity; logged) on the
        main process, None on the others."""
        acc = self.ctx.accelerator
        pool_dir = self.ctx.run_dir / POOLS_DIR / f"epoch-{epoch:04d}"
        rec = self._write(epoch, sampler, pool_dir) if acc.is_main_process else None
        acc.wait_for_everyone()
        self.current, self.dir = read_pool(pool_dir), pool_dir
        return rec

    def _write(self, epoch: int, sampler: DiffusionSampler, pool_dir: Path) -> dict[str, Any]:
        ctx, cfg, d = self.ctx, self.ctx.cfg, self.d
        real = (
            ctx.real.images
            if ctx.real is not None
            else sample_images(ctx.batches, 4 * cfg.train.batch_size, REFERENCE_EPOCH)
        )
        reference = reference_batch(real, cfg.train.batch_size, cfg.train.seed).to(ctx.accelerator.device)
        scorer = Scorer(ctx.encoder(), ctx.views, ctx.objective, reference, seed=cfg.train.seed)
        what = " and ".join(f"{n} {k}" for k, n in self.counts.items() if n)
        phase = Phase(
            f"sampling the pool of epoch {epoch + 1}",
            sum(self.counts.values()),
            "img",
            progress=ctx.progress,
            logger=self.logger,
            detail=f" ({what}; guidance {sampler.guidance_scale:.3g}, t_split {sampler.t_split:.3g})",
        ).start()
        plan = SetPlan(
            "pool",
            self.counts,
            seed=cfg.train.seed * 100_003 + epoch,
            batch_size=d.sample_batch_size,
            maxcount=max(1, d.pool_size // max(1, ctx.accelerator.num_processes)),
            manifest_fields={"config": to_dict(cfg), "producer": {"name": "diffusion-pool", "epoch": epoch}},
        )
        res = write_samples(pool_dir, plan, sampler, scorer, events=_PoolProgress(phase))
        rec = self._record(epoch, sampler, res)
        ctx.log(rec)
        phase.result(
            **{k.removeprefix("pool_"): rec[k] for k in ("pool_hardness", "pool_pair_similarity") if k in rec}
        )
        phase.close()
        return rec

    def _record(self, epoch: int, sampler: DiffusionSampler, res: WriteResult) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "epoch": epoch,
            "pool_guidance_scale": sampler.guidance_scale,
            "pool_t_split": sampler.t_split,
        }
        hard = res.hardness[len(res.hardness) - self.counts["hard"] :]  # pairs come first
        if hard:
            rec["pool_hardness"] = sum(hard) / len(hard)
        if res.pair_similarity:
            rec["pool_pair_similarity"] = sum(res.pair_similarity) / len(res.pair_similarity)
        return rec

    def chunks(self, batch: StepInput) -> list[Chunk]:
        """This step's draw from the current pool (none before the first pool, or during a warm-up)."""
        pool, cfg = self.current, self.ctx.cfg
        if pool is None:
            return []
        device = batch.images.device
        chunks = []
        # drawn with the global generator: every process its own, checkpointed with the run
        if self.b_hard and len(pool.hard) and batch.epoch >= cfg.hsg.warmup_epochs:
            chunks.append(
                Chunk(to_float(pool.hard[torch.randint(len(pool.hard), (self.b_hard,))]).to(device), "syn")
            )
        if self.b_pair and len(pool.pair_a) and batch.epoch >= cfg.hpg.warmup_epochs:
            i = torch.randint(len(pool.pair_a), (self.b_pair,))
            chunks.append(
                Chunk(
                    to_float(pool.pair_a[i]).to(device), "pair", partner=to_float(pool.pair_b[i]).to(device)
                )
            )
        return chunks

    def state(self) -> str | None:
        """The current pool's directory relative to the run (checkpointed), or None."""
        return None if self.dir is None else self.dir.relative_to(self.ctx.run_dir).as_posix()

    def restore(self, pool_dir: Any, source: Path) -> None:
        """Read back the pool a checkpoint (``source``) names by :meth:`state`; it must lie in this run."""
        if pool_dir is None:
            return
        if not isinstance(pool_dir, str) or ".." in Path(pool_dir).parts or Path(pool_dir).is_absolute():
            raise CheckpointError(f"{source}: pool_dir {pool_dir!r} is not a pool of this run")
        self.dir = self.ctx.run_dir / pool_dir
        self.current = read_pool(self.dir)
