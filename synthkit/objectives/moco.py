"""MoCo v2's objective: queries against a momentum encoder's keys and a queue of negatives.

He et al., CVPR 2020; Chen et al., "Improved Baselines with Momentum Contrastive Learning", 2020
(``losses/moco.py`` for the loss, with positive groups). The momentum encoder and the queue are the
objective's state: updated after every step (the keys of every process are gathered before they enter the
queue, chunk by chunk: the real images' keys of every process, then the synthetic ones', the order one process
holding the whole global batch would enqueue them in, so the queue is the same on every process and at every
process count), checkpointed, and published with the run, so that
hardness under a MoCo run is its own loss against its final queue. ``queue_synthetic`` decides whether the
keys of synthetic images enter the queue too.

A query's loss involves only the keys of its own positive group and the queue (the batch's other keys are not
its negatives), so it needs no gather under data parallelism: with the queue gathered as above, the loss and
the hardness at W processes are those of one process holding the whole batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from synthkit.encoders.momentum import MomentumEncoder
from synthkit.losses.moco import moco_per_view
from synthkit.objectives.base import Objective

if TYPE_CHECKING:
    from accelerate import Accelerator

    from synthkit.config import MoCoConfig


class MoCo(Objective):
    name: ClassVar[str] = "moco"
    scores_against_batch: ClassVar[bool] = False  # a query's negatives are the queue, not the batch

    def __init__(self, cfg: MoCoConfig, encoder: nn.Module, proj_dim: int, seed: int) -> None:
        super().__init__(cfg, encoder, proj_dim, seed)
        self.momentum_value = cfg.moco_momentum
        self.queue_synthetic = cfg.queue_synthetic
        self.momentum = MomentumEncoder(encoder, cfg.queue_size, proj_dim, seed=seed)
        self._pending: torch.Tensor | None = None
        self._pending_chunks: list[int] = []

    def per_view(
        self,
        z: torch.Tensor,
        inputs: torch.Tensor | Sequence[torch.Tensor],
        groups: torch.Tensor,
        n_real: int,
        *,
        train: bool,
        global_batch: bool = False,
    ) -> torch.Tensor:
        views = inputs if isinstance(inputs, torch.Tensor) else torch.cat(list(inputs))
        keys = self.momentum.keys(views.detach())
        # the queue itself, not a copy: the loss keeps only its normalised copy for backward, and the queue
        # changes (in place) only in ``after_step``; groups hold two views or more by construction
        per_view = moco_per_view(z, keys, groups, self.momentum.queue, self.temperature, validate=False)
        if train:
            n_images = z.shape[0] // 2
            # the second views' keys, as MoCo enqueues one key per image, and the sizes of their chunks
            if self.queue_synthetic:
                self._pending = keys[n_images:]
                chunks = [n_images] if isinstance(inputs, torch.Tensor) else [len(c) for c in inputs]
                self._pending_chunks = chunks[len(chunks) // 2 :] if len(chunks) > 1 else chunks
            else:
                self._pending, self._pending_chunks = keys[n_images : n_images + n_real], [n_real]
        return per_view

    def after_step(self, encoder: nn.Module, accelerator: Accelerator) -> None:
        if self._pending is None:
            return
        self.momentum.update(accelerator.unwrap_model(encoder), self.momentum_value)
        keys = self._pending.contiguous()
        world = accelerator.num_processes
        if world > 1:  # rank-major from the gather -> chunk-major (every process's real keys first)
            gathered = accelerator.gather(keys).view(world, len(keys), -1)
            bounds = [0, *itertools.accumulate(self._pending_chunks)]
            keys = torch.cat([gathered[:, a:b].flatten(0, 1) for a, b in itertools.pairwise(bounds)])
        self.momentum.enqueue(keys)
        self._pending = None

    def modules(self) -> dict[str, nn.Module]:
        return {"momentum": self.momentum}

    def describe(self) -> dict:
        return {
            **super().describe(),
            "momentum": self.momentum_value,
            "queue": int(self.momentum.queue.shape[0]),
        }
