"""The run: its directory, run files, log and trackers, kNN monitor, checkpoints, final weights and summary.

Everything a training loop needs around the training itself, for every producer and objective, so the loop
(``training/loop.py``) reads as the training alone. Only the main process writes; every method that writes
is safe to call on every process.

A run directory holds ``config.yaml`` (resolved), ``run.json`` (version, git commit, seed, processes, the
producer's kind, the data), ``metrics.jsonl`` (one JSON object per logged step, values reduced over
processes, and per epoch its throughput), tracker logs, verified checkpoints under ``checkpoints/``
(``--resume`` continues from the newest), ``final/`` (the published weights, ``training/artifacts.py``) and
``summary.json`` (with the run's ``throughput``).

Storage: only the main process writes the run directory, but every process writes its own RNG state into
each checkpoint (``accelerator.save_state``) and reads the checkpoint back on ``--resume``, so on several
machines the run directory must be on a filesystem every machine sees at the same path.

Life of a run directory:

- One writer: the main process holds ``RUN/.synthkit.lock`` (``synthkit/locks.py``) from before anything is
  checked until the run ends; a second ``train`` (or ``--resume``) into it is refused in one line. A launch
  whose processes did not form one group (the launcher promised W processes in ``WORLD_SIZE``, but they
  did not join one group) is refused before anything is written.
- A new run that fails before its first checkpoint removes what it created (the directory too, when it
  made it), so the rerun is not blocked; a Ctrl-C or a kill leaves it for ``--resume`` (which starts such a
  run over).
- ``--resume`` needs a directory holding a run (``config.yaml``), else it is refused. A finished run
  (``final/`` of ``train.epochs`` epochs) is left as it is; with more epochs it goes on from its newest
  checkpoint, which must be of the epoch ``final/`` was published at. The checkpoint is checked (checksums,
  then every file's structure: ``run_files/checkpoint.py``) and loaded before anything in the directory is
  written, so a refused resume leaves it as it was.
- ``final/`` is replaced in one step by a new complete result (``synthkit.atomic.replace_dir``); of the old
  one only the files synthkit wrote are deleted, and a ``final/`` holding files of the user's is refused
  before training rather than replaced.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors import SafetensorError
from torch import nn

from synthkit import errors
from synthkit.atomic import check_output_dir, write_text_atomic
from synthkit.config import PipelineConfig, dump_yaml, load_pipeline, to_dict
from synthkit.encoders.model import extract_features
from synthkit.errors import CheckpointError, OutputError, RunError, SynthkitError
from synthkit.images import Panel, labelled_grid, to_uint8
from synthkit.locks import DirLock, LockHeld
from synthkit.logs import format_values
from synthkit.metrics.knn import knn_accuracy, knn_k_problem
from synthkit.provenance import created_by
from synthkit.run_files import checkpoint as ckpt
from synthkit.run_files.final import FINAL, FINAL_JSON
from synthkit.trackers import init_kwargs, log_image, resolve_trackers, tags, tracker_step
from synthkit.trackers import namespace as record_namespace
from synthkit.training.artifacts import publish_final
from synthkit.training.state import (
    STATE_JSON,
    STATE_TENSORS,
    LoopState,
    load_loop_state,
    read_counters,
    save_loop_state,
)

if TYPE_CHECKING:
    from synthkit.data.sources import ImageSet
    from synthkit.objectives.base import Objective
    from synthkit.producers.base import Contribution, Producer

__all__ = ["MONITOR_MAX_TRAIN", "Run", "RunError", "RunResult"]

logger = logging.getLogger(__name__)

MONITOR_MAX_TRAIN = 10_000
#: images per row of the trackers' sample grid (one row per synthetic chunk; pairs: a row of a, one of b)
GRID_PER_ROW = 16
#: producer records echoed to the log as one line: per pool refresh (and any ``*_final_loss`` record)
ECHOED = ("pool",)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    #: ``--resume`` of a run that had finished its ``train.epochs`` already: nothing was done
    already_finished: bool = False


def promised_processes() -> tuple[int, str] | None:
    """The number of processes the launcher started, from its environment (torchrun and ``accelerate
    launch``: WORLD_SIZE; MPI: OMPI_COMM_WORLD_SIZE, PMI_SIZE), and the variable; None when not launched."""
    for var in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                return int(value), var
            except ValueError:
                raise RunError(f"{var}={value!r} is not a number of processes") from None
    return None


def check_launch(accelerator: Accelerator) -> None:
    """Refuse a launch whose processes did not form one group: the launcher promised W processes, but this
    process's Accelerator (or torch's process group) counts another number. Each such process would train a
    run of its own into the same directory. Nothing has been written when this raises."""
    import torch.distributed as dist

    promised = promised_processes()
    formed = accelerator.num_processes
    group = dist.get_world_size() if dist.is_available() and dist.is_initialized() else None
    if promised is None or (promised[0] == formed and group in (None, formed)):
        return
    n, var = promised
    why = (
        "accelerate set up no distributed run (no GPU here? on CPUs launch with ACCELERATE_USE_CPU=1 "
        "accelerate launch --multi_gpu --num_processes N)"
        if formed == 1
        else f"accelerate counts {formed} and torch's process group {group}"
    )
    raise RunError(
        f"the launcher started {n} processes ({var}={n}) but they did not join one group: {why}; "
        "nothing was written"
    )


def _rng_states() -> tuple[Any, ...]:
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_rng_states(states: tuple[Any, ...]) -> None:
    py, npy, cpu, cuda = states
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _fingerprint(tensors: list[torch.Tensor]) -> torch.Tensor:
    flat = torch.cat([t.detach().double().flatten() for t in tensors])
    return torch.stack([flat.sum(), flat.square().sum()])


def _write_failure(exc: BaseException, where: Path) -> str:
    """Why a write failed, in a few words: a full disk is said as such whoever reported it."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk full (ENOSPC)"
    if "No space left on device" in str(exc) or "os error 28" in str(exc):  # safetensors' own I/O error
        return "disk full (ENOSPC)"
    try:
        if shutil.disk_usage(where).free < (1 << 20):
            return "disk full"
    except OSError:
        pass
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"


def _synced_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers that every process must hold alike; batch-norm statistics are each process's
    own (DDP broadcasts rank 0's at every forward pass, and each process updates them with its batch)."""
    norm_buffers = {
        id(b)
        for m in module.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        for b in m.buffers()
    }
    return list(module.parameters()) + [b for b in module.buffers() if id(b) not in norm_buffers]


def _throughput(epochs: list[dict[str, Any]], batch_size: int, world: int) -> dict[str, Any]:
    """The run's throughput over its logged epochs (resumed runs: every epoch, from ``metrics.jsonl``)."""
    seconds = sum(r["epoch_time_s"] for r in epochs)
    steps = sum(round(r["epoch_time_s"] / r["epoch_step_time_s"]) for r in epochs)
    return {
        "num_processes": world,
        "batch_size": batch_size,
        "epochs": len(epochs),
        "steps": steps,
        "time_s": seconds,
        "step_time_s": seconds / steps,
        "images_per_s": batch_size * steps / seconds,
        "images_per_s_per_process": batch_size * steps / seconds / world,
    }


def check_run_dir(cfg: PipelineConfig, run_dir: Path, resume: bool) -> None:
    """A new run needs an unused directory; a resumed one the same config (``train.epochs`` may grow, and
    ``train.trackers`` change)."""
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


class Run:
    """One training run's directory and bookkeeping.

    Args:
        cfg: the resolved pipeline.
        run_dir: where everything goes.
        resume: continue from the newest checkpoint (verified before anything is written).
        accelerator: an Accelerator to use (tests, notebooks); by default one is made from the config.
    """

    def __init__(
        self, cfg: PipelineConfig, run_dir: Path, *, resume: bool, accelerator: Accelerator | None = None
    ) -> None:
        self.ckpt_root = run_dir / "checkpoints"
        self.cfg, self.dir = cfg, check_output_dir(run_dir, "--out (the run directory)", create=False)
        self.trackers = resolve_trackers(cfg.train.trackers)
        try:
            self.accelerator = accelerator or Accelerator(
                mixed_precision=cfg.train.mixed_precision,
                log_with=self.trackers or None,
                project_dir=str(run_dir),
            )
        except (ValueError, RuntimeError, OSError) as e:  # torch.distributed's rendezvous, a device
            promised = promised_processes()
            what = f"the {promised[0]} processes the launcher started" if promised else "this process"
            raise RunError(f"cannot set up {what}: {ckpt._first_line(e)}; nothing was written") from e
        check_launch(self.accelerator)
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        if cfg.train.batch_size % self.world:
            raise RunError(
                f"train.batch_size={cfg.train.batch_size} is not divisible by {self.world} processes"
            )
        self.metrics = run_dir / "metrics.jsonl"
        self.step = 0  # the encoder step records are logged at
        self._knn_warned = False
        self.resume = resume
        self.lock = DirLock(run_dir, "run directory")
        self.before: set[str] | None = None  # what the directory held before this invocation (None: nothing)
        self.checkpointed = False  # this invocation published a checkpoint
        self.finished: RunResult | None = None
        # the main process takes the lock and checks the directory; every process learns the outcome
        outcome: list[Any] = [None]
        restart = False
        if self.is_main:
            try:
                restart = self._open()
            except SynthkitError as e:
                outcome = [(type(e).__name__, str(e))]
        if self.world > 1:
            shared = [outcome[0], restart, self.finished]
            broadcast_object_list(shared, from_process=0)
            outcome, restart, self.finished = [shared[0]], bool(shared[1]), shared[2]
        if outcome[0] is not None:
            name, message = outcome[0]
            cls = LockHeld if name == "LockHeld" else getattr(errors, name, RunError)
            raise cls(message)
        self.resume_from: Path | None = None
        if self.finished is None:
            try:
                if restart:
                    self._start_over()
                if resume and not restart:
                    self.resume_from = ckpt.checkpoint_dirs(self.ckpt_root)[-1]
            except BaseException:
                self.lock.release()
                raise

    def _open(self) -> bool:
        """Main process: lock the directory, then check it can be used as asked. Returns whether a
        ``--resume`` has to start the run over (killed before its first checkpoint)."""
        run_dir = self.dir
        self.before = set(os.listdir(run_dir)) if run_dir.is_dir() else None
        if self.resume and not (run_dir / "config.yaml").is_file():
            check_run_dir(self.cfg, run_dir, resume=True)  # refused: no run to resume (nothing is created)
        self.lock.acquire()
        try:
            check_run_dir(self.cfg, run_dir, self.resume)
            if not self.resume:
                return False
            found = ckpt.checkpoint_dirs(self.ckpt_root)
            final = run_dir / FINAL
            done = self._finished_epochs(final)
            if done is not None:
                epochs = self.cfg.train.epochs
                if done == epochs:
                    self.finished = RunResult(run_dir, self._read_summary(), already_finished=True)
                    return False
                if done > epochs:
                    raise RunError(
                        f"{run_dir} finished {done} epochs already; train.epochs={epochs} asks for fewer "
                        "(nothing to resume)"
                    )
                foreign = ckpt.foreign_files(final)
                if foreign:
                    raise RunError(
                        f"cannot train {run_dir} further: its final/ holds files synthkit did not write "
                        f"({foreign[0]}{' and more' if len(foreign) > 1 else ''}), which the new result "
                        "would replace; move them out of final/ first (nothing was changed)"
                    )
                newest = ckpt.checkpoint_name(done)
                if not found or found[-1].name != newest:
                    have = found[-1].name if found else "none"
                    raise RunError(
                        f"cannot train {run_dir} further: final/ is of epoch {done} but its newest "
                        f"checkpoint is {have} (it needs {newest}); start a new run to train longer"
                    )
            elif final.exists() and ckpt.foreign_files(final):
                raise RunError(
                    f"cannot resume {run_dir}: its final/ holds files synthkit did not write; move them "
                    "out of final/ first (nothing was changed)"
                )
            if not found:
                return True  # the same run (its config was checked), killed before its first checkpoint
            ckpt.verify_checkpoint(found[-1])
            return False
        except BaseException:
            self.lock.release()
            raise

    @staticmethod
    def _finished_epochs(final: Path) -> int | None:
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

    def _read_summary(self) -> dict[str, Any]:
        try:
            summary = json.loads((self.dir / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return summary if isinstance(summary, dict) else {}

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Around the whole run: the lock is released at the end, and a new run that fails before its
        first checkpoint removes what it created (a KeyboardInterrupt, like a kill, leaves it for
        ``--resume``)."""
        try:
            yield
        except Exception:
            if self.is_main:
                self._clean_up()
            raise
        finally:
            self.lock.release()

    def _clean_up(self) -> None:
        if (self.resume and self.before is not None and "config.yaml" in self.before) or self.checkpointed:
            return  # an existing run: never delete any of it
        if not self.lock.held:
            return  # it was never ours
        for name in sorted(set(os.listdir(self.dir)) - (self.before or set()) - {self.lock.path.name}):
            path = self.dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        logger.info("nothing of the failed run was kept in %s", self.dir)

    def _start_over(self) -> None:
        """``--resume`` on a run killed before its first checkpoint: nothing to resume, so start it over."""
        if self.is_main:
            logger.warning("%s has no checkpoint yet: starting the run over from its first step", self.dir)
            for leftover in (self.metrics, self.dir / "summary.json", self.dir / "indices.json"):
                leftover.unlink(missing_ok=True)
            for tree in (self.dir / "pools", self.dir / "synthkit", self.dir / ".tmp_final"):
                if tree.is_dir():
                    shutil.rmtree(tree)
            for tree in self.ckpt_root.glob(".tmp_*") if self.ckpt_root.is_dir() else []:
                shutil.rmtree(tree)  # a checkpoint a kill interrupted (there is no published one)
        self.accelerator.wait_for_everyone()

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # ------------------------------------------------------------------ files and log
    def write_files(
        self, data: dict[str, Any], producer: dict[str, Any] | None, encoder: dict[str, Any] | None = None
    ) -> None:
        """``config.yaml`` (resolved), ``run.json`` (version, seed, processes, producer, data), trackers.

        Every random generator is as it was before (a tracker may draw from them), so a resumed run goes on
        from exactly the checkpoint's state."""
        rng = _rng_states()
        if self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.dir / "config.yaml", dump_yaml(self.cfg))
            info = {
                "created_by": created_by(),
                "seed": self.cfg.train.seed,
                "num_processes": self.world,
                "producer": producer,
                "encoder": encoder,
                "data": data,
            }
            write_text_atomic(self.dir / "run.json", json.dumps(info, indent=2))
        self.accelerator.wait_for_everyone()
        if self.trackers:
            try:
                self.accelerator.init_trackers(
                    "synthkit",
                    config=_flat(to_dict(self.cfg)),
                    init_kwargs=init_kwargs(self.trackers, self.dir) if self.is_main else {},
                )
            except OSError as e:
                raise OutputError(
                    f"cannot start the trackers in {self.dir}: {_write_failure(e, self.dir)}"
                ) from e
            if self.is_main:
                logger.info("trackers: %s", ", ".join(self.trackers))
        _set_rng_states(rng)

    def log(self, record: dict[str, Any], step: int | None = None, namespace: str | None = None) -> None:
        """One record to ``metrics.jsonl`` (main process, as it is) and its numbers to the trackers, as
        namespaced tags (``synthkit/trackers.py``): ``namespace`` (``train``, ``epoch``) or what the record's
        keys say it is (a producer's GAN pre-training, diffusion stage 1 or pool records)."""
        step = self.step if step is None else step
        if self.is_main:
            try:
                with open(self.metrics, "a") as f:
                    f.write(json.dumps({"step": step, **record}) + "\n")
            except OSError as e:
                raise OutputError(f"cannot write {self.metrics}: {e.strerror or e}") from e
        ns = namespace or record_namespace(record)
        values = tags(record, ns)
        if values and self.trackers:
            with self._tracker_errors():
                self.accelerator.log(values, step=tracker_step(record, ns, step))
        if self.is_main and (ns in ECHOED or any(k.endswith("_final_loss") for k in record)):
            logger.info("%s: %s", ns, format_values({k.split("/", 1)[1]: v for k, v in values.items()}))

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
        with self._tracker_errors():
            log_image(self.accelerator, "samples/grid", grid, self.step, epoch)

    @contextlib.contextmanager
    def _tracker_errors(self) -> Iterator[None]:
        """A tracker that cannot write (a full disk under its log directory, a server gone) ends the run
        with one line; the last checkpoint stays resumable."""
        try:
            yield
        except SynthkitError:
            raise
        except Exception as e:  # noqa: BLE001 - every tracker library raises its own types
            raise OutputError(
                f"the trackers ({', '.join(self.trackers)}) cannot log in {self.dir}: "
                f"{_write_failure(e, self.dir)}; the last checkpoint is intact (fix it, then --resume)"
            ) from e

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

    def _truncate_log(self, step: int) -> None:
        """Drop the records of steps the checkpoint does not include (they will be logged again)."""
        if self.is_main and self.metrics.exists():
            keep = [r for r in self.records() if r["step"] <= step]
            write_text_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in keep))

    # ------------------------------------------------------------------ monitor
    @torch.no_grad()
    def knn_monitor(self, encoder: nn.Module, real: ImageSet, test: ImageSet) -> float:
        """Weighted-kNN accuracy of the backbone features (at most MONITOR_MAX_TRAIN training images)."""
        device = self.accelerator.device
        n = min(len(real), MONITOR_MAX_TRAIN)
        train_f = extract_features(encoder, real.images[:n], device=device)
        test_f = extract_features(encoder, test.images, device=device)
        assert real.labels is not None and test.labels is not None
        problem = knn_k_problem(self.cfg.train.knn_k, real.labels[:n], "train.knn_k")
        if problem and not self._knn_warned:
            logger.warning("kNN monitor: %s", problem)
            self._knn_warned = True
        return knn_accuracy(
            train_f,
            real.labels[:n],
            test_f,
            test.labels,
            k=self.cfg.train.knn_k,
            temperature=self.cfg.train.knn_temperature,
        )

    # ------------------------------------------------------------------ checkpoints
    def check_checkpoint(self, objective: Objective, producer: Producer) -> None:
        """Every file of the checkpoint to resume from against this run's models, optimizers and settings
        (``run_files/checkpoint.py``), before any of it is loaded; one CheckpointError line naming the
        file."""
        path = self.resume_from
        assert path is not None
        acc, cfg = self.accelerator, self.cfg
        streaming = bool(cfg.mix.sources)
        optional = frozenset({"seen_keys"}) if streaming and cfg.train.record_indices else frozenset()
        meta = read_counters(path, optional)
        step = int(meta["step"])  # type: ignore[call-overload]
        seen: dict[str, tuple[tuple[int, ...], str]] = {}
        if cfg.train.record_indices and not streaming and step > 0:
            seen["seen"] = ((step, self.world, cfg.train.batch_size // self.world), "I64")
        tensors = {STATE_TENSORS: seen}  # checked against the loop's own layout
        for name, module in objective.modules().items():
            tensors[f"objective_{name}.safetensors"] = ckpt.tensor_layout(module.state_dict())[0]
        for file, module in producer.checkpoint_layout().items():
            tensors[file] = ckpt.tensor_layout(module.state_dict())[0]
        ckpt.check_structure(
            path,
            models=list(acc._models),
            optimizers=list(acc._optimizers),
            rank=self.rank,
            scaler=acc.scaler,
            tensors=tensors,
            json_keys={},
            own_prefixes=("producer_", STATE_JSON),
        )

    def load_checkpoint(self, objective: Objective, producer: Producer) -> LoopState:
        """Check, then restore models, optimizers, RNGs, the objective's and producer's state, the loop
        counters. Writes nothing until everything is loaded (then the log is cut back to the checkpoint)."""
        path = self.resume_from
        assert path is not None
        self.check_checkpoint(objective, producer)
        streaming = bool(self.cfg.mix.sources)
        optional = frozenset({"seen_keys"}) if streaming and self.cfg.train.record_indices else frozenset()
        state = load_loop_state(path, optional)
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
                f"{ckpt._first_line(e)}"
            ) from e
        try:
            objective.load(path)
            producer.load_state(path)
        except SynthkitError:
            raise
        except Exception as e:  # noqa: BLE001 - a producer's loader (torch, safetensors, diffusers)
            raise CheckpointError(
                f"checkpoint {path}: the producer's state cannot be loaded ({ckpt._first_line(e)})"
            ) from e
        if self.is_main:
            self._truncate_log(state.step)
            logger.info("resumed from epoch %d (step %d) of %s", state.epoch, state.step, self.dir)
        self.step = state.step
        return state

    def check_finite(self, record: dict[str, float], state: LoopState) -> None:
        """Stop a diverged run at the step it diverged, the same way on every process.

        Every process votes (an all-reduce of one flag): with several processes a NaN on one of them would
        otherwise leave the others waiting in the next step's gradient all-reduce.
        """
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        flag = torch.tensor([1.0 if bad else 0.0], device=self.accelerator.device)
        if self.world > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        if float(flag.sum()) > 0:
            what = f"{bad[0]} = {record[bad[0]]}" if bad else "a loss on another process"
            last = ckpt.checkpoint_dirs(self.ckpt_root)
            kept = (
                f"the last good checkpoint, {last[-1].name}, is intact"
                if last
                else "no checkpoint was written"
            )
            raise RunError(
                f"training diverged at step {state.step} (epoch {state.epoch + 1}): {what}; nothing was "
                f"published and {kept} (lower train.lr, then --resume or start over)"
            )

    def save_checkpoint(
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
        acc, root = self.accelerator, self.ckpt_root
        name = ckpt.checkpoint_name(state.epoch)
        tmp = root / f".tmp_{name}"
        if self.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(tmp))
            if self.is_main:
                save_loop_state(tmp, state)
                objective.save(tmp)
                producer.save_state(tmp)
                (tmp / "config.yaml").write_text(dump_yaml(self.cfg))
            acc.wait_for_everyone()
            if self.is_main:
                ckpt.publish(tmp, root / name)
                self.checkpointed = True
                ckpt.prune(root, self.cfg.train.keep_checkpoints)
        except (
            OSError,
            RuntimeError,
            SafetensorError,
        ) as e:  # torch.save reports a full disk as RuntimeError
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            kept = (
                "earlier checkpoints are intact"
                if ckpt.checkpoint_dirs(root)
                else "no checkpoint had been written yet"
            )
            raise ckpt.CheckpointError(
                f"could not write checkpoint {root / name}: {_write_failure(e, root)}; {kept}"
            ) from e
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ the end
    def publish(
        self,
        encoder: nn.Module,
        objective: Objective,
        producer: Producer,
        state: LoopState,
    ) -> dict[str, Any]:
        """Check the weights agree on every process, publish ``final/`` and write ``summary.json``."""
        acc, device, world = self.accelerator, self.accelerator.device, self.world
        bare = acc.unwrap_model(encoder)
        checks: dict[str, list[torch.Tensor]] = {"encoder": list(bare.parameters())}
        for name, module in producer.fingerprint_modules().items():
            checks[name] = list(module.parameters())
        for name, module in objective.modules().items():  # e.g. MoCo's key encoder and queue
            checks[name] = _synced_tensors(module)
        fingerprints = {k: acc.gather(_fingerprint(v).to(device)).view(world, -1) for k, v in checks.items()}
        broken = [k for k, f in fingerprints.items() if not bool(torch.isfinite(f).all())]
        if broken:  # never publish non-finite weights (a diverged run); every process sees the same gather
            raise RunError(
                f"the {', '.join(broken)} weights are not finite after step {state.step}: nothing was "
                f"published; the last good checkpoint under {self.ckpt_root} is intact (lower train.lr)"
            )
        summary: dict[str, Any] = {}
        if self.is_main:
            try:
                hashes = publish_final(
                    self.dir, self.cfg, bare, objective, producer, epochs=state.epoch, steps=state.step
                )
            except (OSError, RuntimeError, SafetensorError) as e:
                shutil.rmtree(self.dir / ".tmp_final", ignore_errors=True)
                raise OutputError(
                    f"cannot publish {self.dir / 'final'}: {_write_failure(e, self.dir)}; nothing was "
                    "published, the last checkpoint is intact (free space and rerun with --resume)"
                ) from e
            summary = {
                "epochs": state.epoch,
                "steps": state.step,
                "num_processes": world,
                "weights_in_sync": all(bool((f == f[0]).all()) for f in fingerprints.values()),
                "fingerprints": {k: v.tolist() for k, v in fingerprints.items()},
                "hashes": hashes,
                **producer.summary(),
            }
            records = self.records()
            epoch_lines = [r for r in records if "epoch_loss_cl" in r]
            if epoch_lines:
                summary["last_epoch"] = epoch_lines[-1]
            timed = [r for r in records if "epoch_images_per_s" in r]
            if timed:
                summary["throughput"] = _throughput(timed, self.cfg.train.batch_size, world)
            self._write_indices(state)
            write_text_atomic(self.dir / "summary.json", json.dumps(summary, indent=2))
        acc.wait_for_everyone()
        with self._tracker_errors():
            acc.end_training()
        return summary

    def _write_indices(self, state: LoopState) -> None:
        if not self.cfg.train.record_indices:
            return
        world = self.world
        if state.seen_keys:
            seen = {f"rank{r}": [k for step in state.seen_keys for k in step[r]] for r in range(world)}
        elif state.seen:
            stacked = torch.cat(state.seen, dim=1)
            seen = {f"rank{r}": stacked[r].tolist() for r in range(world)}
        else:
            return
        (self.dir / "indices.json").write_text(json.dumps(seen))
