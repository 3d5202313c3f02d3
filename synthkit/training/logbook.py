"""A run's log: ``metrics.jsonl`` (one JSON object per logged step, written by the main process) and the
trackers (TensorBoard, MLflow, ...: namespaced numbers and a labelled sample grid per epoch).

Records are logged at the encoder's step (:attr:`Logbook.step`, which the loop advances); a resumed run cuts
the log back to its checkpoint's step (:meth:`Logbook.truncate`), since the steps after it are logged again.
A tracker that cannot write ends the run with one line; the last checkpoint stays resumable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator

from synthkit.atomic import write_text_atomic
from synthkit.config import PipelineConfig, to_dict
from synthkit.errors import OutputError, RunError, SynthkitError
from synthkit.images import Panel, labelled_grid, to_uint8
from synthkit.logs import format_values
from synthkit.trackers import init_kwargs, log_image, tags, tracker_step
from synthkit.trackers import namespace as record_namespace
from synthkit.training.failures import write_failure

if TYPE_CHECKING:
    from synthkit.producers.base import Contribution

__all__ = ["ECHOED", "GRID_PER_ROW", "Logbook"]

logger = logging.getLogger(__name__)

#: images per row of the trackers' sample grid (one row per synthetic chunk; pairs: a row of a, one of b)
GRID_PER_ROW = 16
#: producer records echoed to the log as one line: per pool refresh (and any ``*_final_loss`` record)
ECHOED = ("pool",)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of dotted keys with plain values (the trackers' hyperparameters)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    """Every random generator (Python's, numpy's, torch's CPU and CUDA ones) as it was before the block."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    gpus = torch.cuda.get_rng_state_all() if cuda else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if gpus is not None:
            torch.cuda.set_rng_state_all(gpus)


class Logbook:
    """``metrics.jsonl`` and the trackers of one run; every method is safe to call on every process.

    Args:
        accelerator: the run's Accelerator (it holds the trackers).
        run_dir: the run directory (the trackers' logs go under it).
        metrics: the path of ``metrics.jsonl``.
        trackers: the trackers to start (``synthkit.trackers.resolve_trackers``); none: the log alone.
    """

    def __init__(self, accelerator: Accelerator, run_dir: Path, metrics: Path, trackers: list[str]) -> None:
        self.accelerator, self.dir, self.metrics, self.trackers = accelerator, run_dir, metrics, trackers
        self.step = 0  # the encoder step records are logged at

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def start_trackers(self, cfg: PipelineConfig) -> None:
        """Start the trackers with the config as their hyperparameters. Every random generator is as it was
        before (a tracker may draw from them), so a resumed run goes on from exactly the checkpoint's
        state."""
        if not self.trackers:
            return
        with _random_state_kept():
            try:
                self.accelerator.init_trackers(
                    "synthkit",
                    config=_flat(to_dict(cfg)),
                    init_kwargs=init_kwargs(self.trackers, self.dir) if self.is_main else {},
                )
            except OSError as e:
                raise OutputError(
                    f"cannot start the trackers in {self.dir}: {write_failure(e, self.dir)}"
                ) from e
        if self.is_main:
            logger.info("trackers: %s", ", ".join(self.trackers))

    def log(self, record: dict[str, Any], step: int | None = None, namespace: str | None = None) -> None:
        """One record to ``metrics.jsonl`` (main process, as it is) and its numbers to the trackers, as
        namespaced tags (``synthkit/trackers.py``): ``namespace`` (``train``, ``epoch``) or what the record's
        keys say it is (a producer's GAN pre-training, diffusion stage 1 or pool records)."""
        step = self.step if step is None else step
        if self.is_main:
            self._append({"step": step, **record})
        ns = namespace or record_namespace(record)
        values = tags(record, ns)
        if values and self.trackers:
            with self.tracker_errors():
                self.accelerator.log(values, step=tracker_step(record, ns, step))
        if self.is_main and (ns in ECHOED or any(k.endswith("_final_loss") for k in record)):
            logger.info("%s: %s", ns, format_values({k.split("/", 1)[1]: v for k, v in values.items()}))

    def _append(self, record: dict[str, Any]) -> None:
        try:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise OutputError(f"cannot write {self.metrics}: {e.strerror or e}") from e

    def log_samples(
        self, contribution: Contribution | None, epoch: int, real: torch.Tensor | None = None
    ) -> None:
        """A labelled grid of the epoch's last step to the trackers: real training images (``real``, uint8
        N x C x H x W, when given), then each synthetic chunk in a panel of its own (pairs: a and b side by
        side, marked); nothing without trackers or synthetic images."""
        if not (self.trackers and self.is_main and contribution is not None and contribution.chunks):
            return
        panels, groups, per = [], [], GRID_PER_ROW // 2  # three panels of 16 would be too wide to read
        if real is not None and len(real):
            panels.append(Panel("real", per))
            groups.append(list(real[:per].permute(0, 2, 3, 1).cpu().numpy()))
        for chunk in contribution.chunks:
            if chunk.partner is None:
                panels.append(Panel(f"synthetic ({chunk.name})", per))
                groups.append(list(to_uint8(chunk.images[:per].float())))
            else:
                k = per // 2
                pairs = torch.stack([chunk.images[:k], chunk.partner[:k]], dim=1).flatten(0, 1)
                panels.append(Panel("positive pairs, a | b", 2 * k, pairs=True))
                groups.append(list(to_uint8(pairs.float())))
        grid, _ = labelled_grid([(f"epoch {epoch}", groups)], panels)
        with self.tracker_errors():
            log_image(self.accelerator, "samples/grid", grid, self.step, epoch)

    def end(self) -> None:
        """End the trackers (they flush their logs)."""
        with self.tracker_errors():
            self.accelerator.end_training()

    @contextlib.contextmanager
    def tracker_errors(self) -> Iterator[None]:
        """A tracker that cannot write (a full disk under its log directory, a server gone) ends the run
        with one line; the last checkpoint stays resumable."""
        try:
            yield
        except SynthkitError:
            raise
        except Exception as e:  # noqa: BLE001 - every tracker library raises its own types
            raise OutputError(
                f"the trackers ({', '.join(self.trackers)}) cannot log in {self.dir}: "
                f"{write_failure(e, self.dir)}; the last checkpoint is intact (fix it, then --resume)"
            ) from e

    # ------------------------------------------------------------------ reading back
    def records(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl``. A last line cut short by a kill is dropped; any other line that
        is not a JSON object with a ``step`` is a RunError naming it."""
        if not self.metrics.exists():
            return []
        lines = self.metrics.read_text(encoding="utf-8", errors="replace").splitlines()
        out = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise ValueError("not a record with a step")
            except ValueError as e:
                if number == len(lines):  # an append interrupted by a kill
                    break
                raise RunError(
                    f"{self.metrics}: line {number} is not a metrics record ({e}); fix or delete it"
                ) from e
            out.append(record)
        return out

    def truncate(self, step: int) -> None:
        """Main process: drop the records of steps after ``step`` (a resumed checkpoint's; they will be
        logged again)."""
        if self.metrics.exists():
            keep = [r for r in self.records() if r["step"] <= step]
            write_text_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in keep))
