"""The run: one training run's parts, made and opened together, for the loop (``training/loop.py``).

Everything a training loop needs around the training itself, for every producer and objective, so the loop
reads as the training alone. Only the main process writes; every method that writes is safe to call on every
process. :class:`Run` holds one part per job:

- ``training/launch.py``: the Accelerator, and a launch whose processes did not form one group refused (the
  launcher promised W processes in ``WORLD_SIZE``, but they did not join one group) before anything is
  written;
- ``training/run_dir.py`` (:attr:`Run.rundir`): the directory's life: one writer (``RUN/.synthkit.lock``),
  the checks of a new run and of ``--resume``, a run killed before its first checkpoint started over, a new
  run that fails before its first checkpoint removed again (a Ctrl-C or a kill leaves it for ``--resume``);
- ``training/logbook.py`` (:attr:`Run.logbook`): ``metrics.jsonl`` and the trackers;
- ``training/checkpoints.py`` (:attr:`Run.checkpoints`): checkpoints checked, loaded and saved, a diverged
  run stopped;
- ``training/monitor.py`` (:attr:`Run.monitor`): the kNN monitor;
- ``training/artifacts.py`` and ``training/summary.py``: ``final/`` and ``summary.json``.

A run directory holds ``config.yaml`` (resolved), ``run.json`` (version, git commit, seed, processes, the
producer's kind, the data), ``metrics.jsonl`` (one JSON object per logged step, values reduced over
processes, and per epoch its throughput), tracker logs, verified checkpoints under ``checkpoints/``
(``--resume`` continues from the newest, checked and loaded before anything in the directory is written, so
a refused resume leaves it as it was), ``final/`` (the published weights) and ``summary.json`` (with the
run's ``throughput``).

``final/`` is replaced in one step by a new complete result (``synthkit.atomic.replace_dir``); of the old one
only the files synthkit wrote are deleted, and a ``final/`` holding files of the user's is refused before
training rather than replaced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors import SafetensorError
from torch import nn

from synthkit import errors
from synthkit.atomic import check_output_dir, write_text_atomic
from synthkit.config import PipelineConfig
from synthkit.errors import OutputError, RunError, SynthkitError
from synthkit.locks import LockHeld
from synthkit.run_files import checkpoint as ckpt
from synthkit.trackers import resolve_trackers
from synthkit.training.artifacts import publish_final
from synthkit.training.checkpoints import Checkpoints
from synthkit.training.failures import write_failure
from synthkit.training.launch import check_launch, make_accelerator
from synthkit.training.logbook import Logbook
from synthkit.training.monitor import KnnMonitor
from synthkit.training.run_dir import FINISHED, RESUME, START_OVER, RunDir
from synthkit.training.state import LoopState
from synthkit.training.summary import check_fingerprints, fingerprints, run_summary, write_indices

if TYPE_CHECKING:
    from synthkit.objectives.base import Objective
    from synthkit.producers.base import Producer

__all__ = ["Run", "RunError", "RunResult"]

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    #: ``--resume`` of a run that had finished its ``train.epochs`` already: nothing was done
    already_finished: bool = False


def _refusal(error: SynthkitError) -> tuple[str, str]:
    """An error as it travels from the main process to the others: its class's name and its message."""
    return type(error).__name__, str(error)


def _raise_refusal(refusal: tuple[str, str]) -> None:
    name, message = refusal
    cls = LockHeld if name == "LockHeld" else getattr(errors, name, RunError)
    raise cls(message)


class Run:
    """One training run: its processes, directory, log, checkpoints and monitor.

    Made on every process; the main process locks and checks the directory and every process learns the
    outcome: a refusal (raised on every process, nothing written), a finished run (:attr:`finished`, its
    summary), or a run to train, new or from :attr:`resume_from`.

    Args:
        cfg: the resolved pipeline.
        run_dir: where everything goes.
        resume: continue from the newest checkpoint (verified before anything is written).
        accelerator: an Accelerator to use (tests, notebooks); by default one is made from the config.
    """

    def __init__(
        self, cfg: PipelineConfig, run_dir: Path, *, resume: bool, accelerator: Accelerator | None = None
    ) -> None:
        self.cfg = cfg
        self.dir = check_output_dir(run_dir, "--out (the run directory)", create=False)
        trackers = resolve_trackers(cfg.train.trackers)
        self.accelerator = accelerator or make_accelerator(cfg, self.dir, trackers)
        check_launch(self.accelerator)
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        if cfg.train.batch_size % self.world:
            raise RunError(
                f"train.batch_size={cfg.train.batch_size} is not divisible by {self.world} processes"
            )
        self.rundir = RunDir(cfg, self.dir, resume)
        self.logbook = Logbook(self.accelerator, self.dir, self.rundir.metrics, trackers)
        self.checkpoints = Checkpoints(cfg, self.accelerator, self.rundir.checkpoints)
        self.monitor = KnnMonitor(cfg, self.accelerator.device)
        self.finished: RunResult | None = None
        self.resume_from: Path | None = None  # the checkpoint to go on from
        opening, summary = self._open()
        if opening == FINISHED:
            self.finished = RunResult(self.dir, summary, already_finished=True)
            return
        try:
            self._set_out(opening)
        except BaseException:
            self.rundir.lock.release()
            raise

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _open(self) -> tuple[str | None, dict[str, Any]]:
        """The main process locks and checks the directory (:meth:`RunDir.open`); every process learns what
        it found (and a finished run's summary), or raises its refusal."""
        shared: list[Any] = [None, None, {}]  # the refusal, what was found, a finished run's summary
        if self.is_main:
            try:
                opening = self.rundir.open()
                summary = self.rundir.read_summary() if opening == FINISHED else {}
                shared = [None, opening, summary]
            except SynthkitError as e:
                shared[0] = _refusal(e)
        if self.world > 1:
            broadcast_object_list(shared, from_process=0)
        if shared[0] is not None:
            _raise_refusal(shared[0])
        return shared[1], shared[2]

    def _set_out(self, opening: str | None) -> None:
        """A run killed before its first checkpoint starts over; a resumed one goes on from its newest
        checkpoint."""
        if opening == START_OVER:
            if self.is_main:
                self.rundir.start_over()
            self.accelerator.wait_for_everyone()
        elif opening == RESUME:
            self.resume_from = ckpt.checkpoint_dirs(self.rundir.checkpoints)[-1]

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Around the whole run: the lock is released at the end, and a new run that fails before its
        first checkpoint removes what it created (a KeyboardInterrupt, like a kill, leaves it for
        ``--resume``)."""
        try:
            yield
        except Exception:
            if self.is_main and not self.checkpoints.published:
                self.rundir.clean_up()
            raise
        finally:
            self.rundir.lock.release()

    # ------------------------------------------------------------------ the start
    def write_files(
        self, data: dict[str, Any], producer: dict[str, Any] | None, encoder: dict[str, Any] | None = None
    ) -> None:
        """``config.yaml`` (resolved), ``run.json`` (version, seed, processes, producer, data), trackers
        (every random generator left as it was: :meth:`Logbook.start_trackers`)."""
        if self.is_main:
            self.rundir.write_files(self.world, data, producer, encoder)
        self.accelerator.wait_for_everyone()
        self.logbook.start_trackers(self.cfg)

    def load_checkpoint(self, objective: Objective, producer: Producer) -> LoopState:
        """Check, then restore models, optimizers, RNGs, the objective's and producer's state, the loop
        counters from :attr:`resume_from`. Writes nothing until everything is loaded (then the log is cut
        back to the checkpoint)."""
        path = self.resume_from
        assert path is not None
        state = self.checkpoints.load(path, objective, producer)
        if self.is_main:
            self.logbook.truncate(state.step)
            logger.info("resumed from epoch %d (step %d) of %s", state.epoch, state.step, self.dir)
        self.logbook.step = state.step
        return state

    # ------------------------------------------------------------------ the end
    def publish(
        self,
        encoder: nn.Module,
        objective: Objective,
        producer: Producer,
        state: LoopState,
    ) -> dict[str, Any]:
        """Check the weights agree on every process, publish ``final/`` and write ``summary.json``."""
        acc = self.accelerator
        bare = acc.unwrap_model(encoder)
        prints = fingerprints(acc, bare, objective, producer)
        check_fingerprints(prints, state, self.rundir.checkpoints)
        summary: dict[str, Any] = {}
        if self.is_main:
            hashes = self._publish_final(bare, objective, producer, state)
            records = self.logbook.records()
            summary = run_summary(
                state,
                prints,
                hashes,
                producer.summary(),
                records,
                batch_size=self.cfg.train.batch_size,
                world=self.world,
            )
            if self.cfg.train.record_indices:
                write_indices(self.dir, state, self.world)
            write_text_atomic(self.dir / "summary.json", json.dumps(summary, indent=2))
        acc.wait_for_everyone()
        self.logbook.end()
        return summary

    def _publish_final(
        self, encoder: nn.Module, objective: Objective, producer: Producer, state: LoopState
    ) -> dict[str, str]:
        """Main process: ``final/`` (``training/artifacts.py``); a write that fails leaves nothing of it."""
        try:
            return publish_final(
                self.dir, self.cfg, encoder, objective, producer, epochs=state.epoch, steps=state.step
            )
        except (OSError, RuntimeError, SafetensorError) as e:
            shutil.rmtree(self.dir / ".tmp_final", ignore_errors=True)
            raise OutputError(
                f"cannot publish {self.dir / 'final'}: {write_failure(e, self.dir)}; nothing was "
                "published, the last checkpoint is intact (free space and rerun with --resume)"
            ) from e
