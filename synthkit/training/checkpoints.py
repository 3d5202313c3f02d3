"""A run's checkpoints under ``RUN/checkpoints/``: checked, loaded, saved, and a diverged run stopped.

A checkpoint holds Accelerate's state (models, optimizers, every process's RNG states, the GradScaler), the
loop's counters (``training/state.py``), the objective's and the producer's state and the config. It is
written to a temporary directory, checksummed and renamed (``run_files/checkpoint.py``: ``publish``), so it
exists complete or not at all; only the newest ``train.keep_checkpoints`` are kept.

Resuming checks every file of the checkpoint against this run's models, optimizers and settings (checksums
were verified when the run directory was opened) before any of it is loaded: a refused resume leaves the
run directory as it was.

Storage: every process writes its own RNG state into each checkpoint and reads it back on ``--resume``, so on
several machines the run directory must be on a filesystem every machine sees at the same path.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from torch import nn

from synthkit.config import PipelineConfig, dump_yaml
from synthkit.errors import CheckpointError, RunError, SynthkitError
from synthkit.run_files import checkpoint as ckpt
from synthkit.run_files.final import first_line
from synthkit.training.failures import write_failure
from synthkit.training.state import (
    STATE_JSON,
    STATE_TENSORS,
    LoopState,
    load_loop_state,
    read_counters,
    save_loop_state,
)

if TYPE_CHECKING:
    from synthkit.objectives.base import Objective
    from synthkit.producers.base import Producer

__all__ = ["Checkpoints"]


class Checkpoints:
    """The checkpoints of one run.

    Args:
        cfg: the resolved pipeline.
        accelerator: the run's Accelerator (its prepared models and optimizers are what a checkpoint holds).
        root: ``RUN/checkpoints``.
    """

    def __init__(self, cfg: PipelineConfig, accelerator: Accelerator, root: Path) -> None:
        self.cfg, self.accelerator, self.root = cfg, accelerator, root
        self.published = False  # this invocation published a checkpoint

    @property
    def _seen_keys_optional(self) -> frozenset[str]:
        """The loop state's optional keys: streamed runs that record indices record sample keys."""
        streaming = bool(self.cfg.mix.sources)
        return frozenset({"seen_keys"}) if streaming and self.cfg.train.record_indices else frozenset()

    # ------------------------------------------------------------------ resuming
    def check(self, path: Path, objective: Objective, producer: Producer) -> None:
        """Every file of the checkpoint ``path`` against this run's models, optimizers and settings
        (``run_files/checkpoint.py``), before any of it is loaded; one CheckpointError line naming the
        file."""
        acc, cfg = self.accelerator, self.cfg
        meta = read_counters(path, self._seen_keys_optional)
        step = int(meta["step"])  # type: ignore[call-overload]
        seen: dict[str, tuple[tuple[int, ...], str]] = {}
        if cfg.train.record_indices and not cfg.mix.sources and step > 0:
            world = acc.num_processes
            seen["seen"] = ((step, world, cfg.train.batch_size // world), "I64")
        tensors = {STATE_TENSORS: seen}  # checked against the loop's own layout
        for name, module in objective.modules().items():
            tensors[f"objective_{name}.safetensors"] = ckpt.tensor_layout(module.state_dict())[0]
        for file, module in producer.checkpoint_layout().items():
            tensors[file] = ckpt.tensor_layout(module.state_dict())[0]
        ckpt.check_structure(
            path,
            models=list(acc._models),
            optimizers=list(acc._optimizers),
            rank=acc.process_index,
            scaler=acc.scaler,
            tensors=tensors,
            json_keys={},
            own_prefixes=("producer_", STATE_JSON),
        )

    def load(self, path: Path, objective: Objective, producer: Producer) -> LoopState:
        """Check, then restore models, optimizers, RNGs, the objective's and producer's state and the loop
        counters from the checkpoint ``path``. Writes nothing."""
        self.check(path, objective, producer)
        state = load_loop_state(path, self._seen_keys_optional)
        if ckpt.checkpoint_name(state.epoch) != path.name:
            raise CheckpointError(
                f"checkpoint {path}: its loop state says epoch {state.epoch}, its name another"
            )
        if state.epoch > self.cfg.train.epochs:
            raise CheckpointError(
                f"checkpoint {path} is at epoch {state.epoch}, past train.epochs={self.cfg.train.epochs}"
            )
        try:
            self.accelerator.load_state(str(path))
        except Exception as e:  # noqa: BLE001 - torch, safetensors and accelerate raise many types
            raise CheckpointError(
                f"checkpoint {path} does not fit this run's models (another encoder or generator shape?): "
                f"{first_line(e)}"
            ) from e
        try:
            objective.load(path)
            producer.load_state(path)
        except SynthkitError:
            raise
        except Exception as e:  # noqa: BLE001 - a producer's loader (torch, safetensors, diffusers)
            raise CheckpointError(
                f"checkpoint {path}: the producer's state cannot be loaded ({first_line(e)})"
            ) from e
        return state

    # ------------------------------------------------------------------ saving
    def check_finite(self, record: dict[str, float], state: LoopState) -> None:
        """Stop a diverged run at the step it diverged, the same way on every process.

        Every process votes (an all-reduce of one flag): with several processes a NaN on one of them would
        otherwise leave the others waiting in the next step's gradient all-reduce.
        """
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        flag = torch.tensor([1.0 if bad else 0.0], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        if float(flag.sum()) > 0:
            what = f"{bad[0]} = {record[bad[0]]}" if bad else "a loss on another process"
            last = ckpt.checkpoint_dirs(self.root)
            kept = (
                f"the last good checkpoint, {last[-1].name}, is intact"
                if last
                else "no checkpoint was written"
            )
            raise RunError(
                f"training diverged at step {state.step} (epoch {state.epoch + 1}): {what}; nothing was "
                f"published and {kept} (lower train.lr, then --resume or start over)"
            )

    def save(
        self,
        state: LoopState,
        objective: Objective,
        producer: Producer,
        modules: list[nn.Module] | None = None,
    ) -> None:
        """Publish a verified checkpoint of the epoch just ended; ``modules`` (the encoder, the producer's)
        must hold finite weights, or nothing is written and the run stops."""
        finite = all(bool(torch.isfinite(p).all()) for m in modules or [] for p in m.parameters())
        self.check_finite({"weights": 0.0 if finite else math.nan}, state)
        acc, root, is_main = self.accelerator, self.root, self.accelerator.is_main_process
        name = ckpt.checkpoint_name(state.epoch)
        tmp = root / f".tmp_{name}"
        if is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(tmp))
            if is_main:
                self._save_own_files(tmp, state, objective, producer)
            acc.wait_for_everyone()
            if is_main:
                ckpt.publish(tmp, root / name)
                self.published = True
                ckpt.prune(root, self.cfg.train.keep_checkpoints)
        except (
            OSError,
            RuntimeError,
            SafetensorError,
        ) as e:  # torch.save reports a full disk as RuntimeError
            if is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            kept = (
                "earlier checkpoints are intact"
                if ckpt.checkpoint_dirs(root)
                else "no checkpoint had been written yet"
            )
            raise CheckpointError(
                f"could not write checkpoint {root / name}: {write_failure(e, root)}; {kept}"
            ) from e
        acc.wait_for_everyone()

    def _save_own_files(self, tmp: Path, state: LoopState, objective: Objective, producer: Producer) -> None:
        """What a checkpoint holds beside Accelerate's state: the loop's counters, the objective's and the
        producer's state, the config."""
        save_loop_state(tmp, state)
        objective.save(tmp)
        producer.save_state(tmp)
        (tmp / "config.yaml").write_text(dump_yaml(self.cfg))
