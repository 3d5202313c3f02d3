"""The life of a run directory: checked, locked, opened for ``--resume``, started over, cleaned up.

- One writer: the main process holds ``RUN/.synthkit.lock`` (``synthkit/locks.py``) from before anything is
  checked until the run ends; a second ``train`` (or ``--resume``) into it is refused in one line.
- A new run needs a directory that holds no run; a resumed one a directory holding a run (``config.yaml``)
  of the same config (:func:`check_run_dir`).
- ``--resume`` of a finished run (``final/`` of ``train.epochs`` epochs) leaves it as it is; with more epochs
  it goes on from its newest checkpoint, which must be of the epoch ``final/`` was published at, and a
  ``final/`` holding files of the user's is refused before training rather than replaced. The newest
  checkpoint's checksums are verified before anything in the directory is written.
- A run killed before its first checkpoint is started over by ``--resume`` (:meth:`RunDir.start_over`).
- A new run that fails before its first checkpoint removes what it created, the directory too when it made
  it (:meth:`RunDir.clean_up`), so the rerun is not blocked.

Only the main process opens, starts over and cleans up; the other processes learn the outcome from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from synthkit.atomic import write_text_atomic
from synthkit.config import PipelineConfig, dump_yaml, load_pipeline, to_dict
from synthkit.errors import CheckpointError, RunError
from synthkit.locks import DirLock
from synthkit.provenance import created_by
from synthkit.run_files import checkpoint as ckpt
from synthkit.run_files.final import FINAL, FINAL_JSON

__all__ = ["FINISHED", "NEW", "RESUME", "START_OVER", "RunDir", "check_run_dir", "finished_epochs"]

logger = logging.getLogger(__name__)

#: what :meth:`RunDir.open` found: a new run; a run to resume from its newest checkpoint; a run killed before
#: its first checkpoint (``--resume`` starts it over); a run that has trained its ``train.epochs`` already
NEW, RESUME, START_OVER, FINISHED = "new", "resume", "start over", "finished"


def check_run_dir(cfg: PipelineConfig, run_dir: Path, resume: bool) -> None:
    """A new run needs an unused directory; a resumed one the same config (``train.epochs`` may grow, and
    ``train.trackers`` and ``remote.*`` change)."""
    saved = run_dir / "config.yaml"
    if not resume:
        if saved.exists():
            raise RunError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        return
    if not saved.exists():
        what = "does not exist" if not run_dir.exists() else "holds no run (no config.yaml)"
        raise RunError(
            f"cannot resume: {run_dir} {what}; check the path, or leave out --resume to start a new run there"
        )
    old = to_dict(load_pipeline(saved))
    new = to_dict(cfg)
    old["train"]["epochs"] = new["train"]["epochs"]  # extending a run is allowed
    old["train"]["trackers"] = new["train"].get("trackers")  # where it is logged does not change the run
    old["remote"] = new["remote"]  # nor how remote shards are retried
    diffs = [
        f"{s}.{k}: {old[s].get(k)!r} -> {new[s][k]!r}"
        for s in new
        for k in new[s]
        if old[s].get(k) != new[s][k]
    ]
    diffs += [f"{s}.{k}: {old[s][k]!r} -> (none)" for s in old for k in old[s] if k not in new.get(s, {})]
    if diffs:
        raise RunError(
            "cannot resume with a different config (only train.epochs, train.trackers and remote.* may "
            "change): " + "; ".join(diffs)
        )


def finished_epochs(final: Path) -> int | None:
    """The epochs of the published ``final/``; None when there is none (or it is not whole)."""
    if not final.is_dir():
        return None
    try:
        ckpt.verify_checkpoint(final, allow_unlisted=True)  # the user's own files aside
        meta = json.loads((final / FINAL_JSON).read_text(encoding="utf-8"))
        epochs = meta["epochs"]
    except (CheckpointError, OSError, ValueError, KeyError, TypeError):
        return None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


class RunDir:
    """One run directory, as this invocation found it and uses it.

    Args:
        cfg: the resolved pipeline.
        path: the run directory (checked to be a usable output place; it may not exist yet).
        resume: ``--resume`` was asked for.
    """

    def __init__(self, cfg: PipelineConfig, path: Path, resume: bool) -> None:
        self.cfg, self.path, self.resume = cfg, path, resume
        self.checkpoints = path / "checkpoints"
        self.metrics = path / "metrics.jsonl"
        self.lock = DirLock(path, "run directory")
        self.before: set[str] | None = None  # what the directory held before this invocation (None: nothing)

    # ------------------------------------------------------------------ opening
    def open(self) -> str:
        """Main process: lock the directory, then check it can be used as asked. Returns :data:`NEW`,
        :data:`RESUME`, :data:`START_OVER` or :data:`FINISHED`; a refusal raises with the lock released
        and nothing written (a ``--resume`` of a directory holding no run creates nothing, not even the
        lock)."""
        self.before = set(os.listdir(self.path)) if self.path.is_dir() else None
        if self.resume and not (self.path / "config.yaml").is_file():
            check_run_dir(self.cfg, self.path, resume=True)  # refused: no run to resume (nothing is created)
        self.lock.acquire()
        try:
            check_run_dir(self.cfg, self.path, self.resume)
            return self._resumable() if self.resume else NEW
        except BaseException:
            self.lock.release()
            raise

    def _resumable(self) -> str:
        """What a ``--resume`` finds: a finished run, one to train further, or one without a checkpoint."""
        found = ckpt.checkpoint_dirs(self.checkpoints)
        final = self.path / FINAL
        done = finished_epochs(final)
        if done == self.cfg.train.epochs:
            return FINISHED
        if done is not None:
            self._check_going_on(done, found)
        elif final.exists() and ckpt.foreign_files(final):
            raise RunError(
                f"cannot resume {self.path}: its final/ holds files synthkit did not write; move them "
                "out of final/ first (nothing was changed)"
            )
        if not found:
            return START_OVER  # the same run (its config was checked), killed before its first checkpoint
        ckpt.verify_checkpoint(found[-1])
        return RESUME

    def _check_going_on(self, done: int, found: list[Path]) -> None:
        """A finished run of ``done`` epochs asked for more: its ``final/`` holds only synthkit's files (the
        new result replaces it) and its newest checkpoint is the one ``final/`` was published from."""
        epochs = self.cfg.train.epochs
        if done > epochs:
            raise RunError(
                f"{self.path} finished {done} epochs already; train.epochs={epochs} asks for fewer "
                "(nothing to resume)"
            )
        foreign = ckpt.foreign_files(self.path / FINAL)
        if foreign:
            raise RunError(
                f"cannot train {self.path} further: its final/ holds files synthkit did not write "
                f"({foreign[0]}{' and more' if len(foreign) > 1 else ''}), which the new result "
                "would replace; move them out of final/ first (nothing was changed)"
            )
        newest = ckpt.checkpoint_name(done)
        if not found or found[-1].name != newest:
            have = found[-1].name if found else "none"
            raise RunError(
                f"cannot train {self.path} further: final/ is of epoch {done} but its newest "
                f"checkpoint is {have} (it needs {newest}); start a new run to train longer"
            )

    def read_summary(self) -> dict[str, Any]:
        """``summary.json`` of a finished run; empty when it cannot be read."""
        try:
            summary = json.loads((self.path / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return summary if isinstance(summary, dict) else {}

    # ------------------------------------------------------------------ writing
    def write_files(
        self,
        num_processes: int,
        data: dict[str, Any],
        producer: dict[str, Any] | None,
        encoder: dict[str, Any] | None,
    ) -> None:
        """Main process: ``config.yaml`` (resolved) and ``run.json`` (version, seed, processes, producer,
        encoder, data), creating the directory."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path / "config.yaml", dump_yaml(self.cfg))
        info = {
            "created_by": created_by(),
            "seed": self.cfg.train.seed,
            "num_processes": num_processes,
            "producer": producer,
            "encoder": encoder,
            "data": data,
        }
        write_text_atomic(self.path / "run.json", json.dumps(info, indent=2))

    def start_over(self) -> None:
        """Main process, ``--resume`` of a run killed before its first checkpoint: nothing to resume, so its
        leftovers go and the run starts from its first step."""
        logger.warning("%s has no checkpoint yet: starting the run over from its first step", self.path)
        for leftover in (self.metrics, self.path / "summary.json", self.path / "indices.json"):
            leftover.unlink(missing_ok=True)
        for tree in (self.path / "pools", self.path / "synthkit", self.path / ".tmp_final"):
            if tree.is_dir():
                shutil.rmtree(tree)
        for tree in self.checkpoints.glob(".tmp_*") if self.checkpoints.is_dir() else []:
            shutil.rmtree(tree)  # a checkpoint a kill interrupted (there is no published one)

    def clean_up(self) -> None:
        """Main process, a run that failed before its first checkpoint: remove what this invocation created
        (the directory too, with the lock's release, when it made it). A directory that held a run before
        is never touched, nor one whose lock was never ours."""
        held_a_run = self.before is not None and "config.yaml" in self.before
        if (self.resume and held_a_run) or not self.lock.held:
            return
        for name in sorted(set(os.listdir(self.path)) - (self.before or set()) - {self.lock.path.name}):
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        logger.info("nothing of the failed run was kept in %s", self.path)
