"""What the training loop, the export and the audit need of a contrastive objective.

An objective scores the encoder's projections of a batch of views: ``per_view`` returns one loss per view
(rows: view 1 of every image, then view 2 of every image), with views of one *positive group* (an image's
two views; a generated pair's four) as each other's positives. Hardness (docs/method.md) is then the same for
every objective: the mean loss of an image's two views, in a batch with real images
(``objectives/scoring.py``). State kept between steps (MoCo's momentum encoder and queue) lives in the
objective, which checkpoints and publishes it, so that a run's exported hardness is its own loss.

Under data parallelism a training step's batch is split over the processes; ``per_view(...,
global_batch=True)`` then scores this process's rows against every process's (``synthkit.distributed``), so
the loss and each sample's hardness do not depend on the number of processes.

Subclasses differ by overriding ``per_view`` and, when they keep state, ``after_step`` and ``modules``
(the moco-v3 ``builder.py`` pattern: variants override one small method).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from synthkit.registry import OBJECTIVES
from synthkit.weights import load_into, load_state_dict, save_state_dict

if TYPE_CHECKING:
    from accelerate import Accelerator

    from synthkit.config import ObjectiveConfig


class Objective:
    """A contrastive objective; holds its hyperparameters and any state between steps.

    Args:
        cfg: the ``objective`` section.
        encoder: the (bare, not DDP-wrapped) query encoder, for objectives that copy it.
        proj_dim: the projection dimension.
        seed: seeds any state the objective draws at random (MoCo's initial queue).
    """

    name: ClassVar[str] = ""
    # whether a view's loss involves the batch's other images (SimCLR's negatives); False when it involves
    # only its own positive group and the objective's state (MoCo's queue): scoring then needs no real
    # reference batch next to the samples (objectives/scoring.py)
    scores_against_batch: ClassVar[bool] = True

    def __init__(self, cfg: ObjectiveConfig, encoder: nn.Module, proj_dim: int, seed: int) -> None:
        self.cfg = cfg
        self.temperature = cfg.temperature

    # ------------------------------------------------------------------ the loss
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
        """Per-view losses (2M,) of projections ``z`` (2M x D) of the views ``inputs`` (2M x C x H x W, or
        a list of chunks of them in row order: the first half view 1 of each chunk, then view 2).

        ``groups`` are the 2M group ids, unique within this process; the first ``n_real`` images are real
        (a loss may treat them differently, e.g. MoCo's queue). ``train`` is True inside a training step
        (the objective may keep what it needs for ``after_step``) and False when only scoring.
        ``global_batch``: this process holds one share of a batch split over every process of the default
        process group (a training step under data parallelism): the losses are those of these rows in the
        whole batch, as one process holding all of it would compute them, and the gradient is what DDP's
        averaging needs to give the one-process gradient (``synthkit.distributed``). Every process must
        then call ``per_view`` at the same point. Scoring (``objectives/scoring.py``) leaves it False: an
        export's chunks are scored within one process, whatever the process count.
        """
        raise NotImplementedError

    def after_step(self, encoder: nn.Module, accelerator: Accelerator) -> None:
        """After the optimizer step (MoCo: momentum update and enqueue)."""

    # ------------------------------------------------------------------ state
    def modules(self) -> dict[str, nn.Module]:
        """State outside Accelerate's care, by name; checkpointed and published with the run."""
        return {}

    def to(self, device: torch.device | str) -> Objective:
        for module in self.modules().values():
            module.to(device)
        return self

    def save(self, directory: Path) -> dict[str, str]:
        """Write ``modules()`` as ``objective_NAME.safetensors``; return their content hashes."""
        return {
            f"objective_{name}": save_state_dict(module, directory / f"objective_{name}.safetensors")
            for name, module in self.modules().items()
        }

    def load(self, directory: Path, hashes: dict[str, str] | None = None) -> None:
        """Load what ``save`` wrote; with ``hashes``, each file must have its recorded content hash."""
        for name, module in self.modules().items():
            path = directory / f"objective_{name}.safetensors"
            expected = None if hashes is None else hashes.get(f"objective_{name}", "missing")
            load_into(module, load_state_dict(path, expected), f"{path}")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "temperature": self.temperature}


def build_objective(cfg: ObjectiveConfig, encoder: nn.Module, proj_dim: int, seed: int) -> Objective:
    """The objective named by ``cfg.name``, through the ``OBJECTIVES`` registry."""
    cls = OBJECTIVES.get(cfg.name).impl_class()
    return cls(cfg, encoder, proj_dim, seed)
