"""Experiment trackers (``train.trackers``): TensorBoard, Weights & Biases, MLflow, several, or none.

The trackers are Accelerate's (``Accelerator(log_with=...)``, PRODUCT.md's stack); this module adds what a
run needs around them: which packages each needs and the extra that installs them (a missing one is a
one-line error before anything is written), where each writes (inside the run directory unless the
tracker's own environment variable says otherwise), namespaced tags, and sample grids as images.

Where each one writes, so that a run describes itself:

* ``tensorboard``: ``RUN/synthkit/`` (event files; ``tensorboard --logdir RUN``).
* ``mlflow``: the server or store of ``MLFLOW_TRACKING_URI`` when it is set; otherwise a store of the run's
  own, ``sqlite:///RUN/mlflow.db`` with artifacts in ``RUN/mlartifacts`` (MLflow 3 refuses its old plain
  file store by default, and its own default is a ``mlflow.db`` in whatever directory the job started in).
  Experiment ``synthkit``, run name the run directory's name.
* ``wandb``: project ``synthkit``, run name the run directory's name, files under ``RUN/wandb``;
  ``WANDB_MODE=offline`` keeps it on the machine (``wandb sync`` uploads it later).

Tags are namespaced by what the record is (``train/loss_cl`` per logged step, ``epoch/loss_cl`` and
``epoch/knn_acc`` per epoch, ``pretrain/loss_d`` for GAN pre-training, ``diffusion/loss``, ``pool/...``);
counters (``epoch``, ``pretrain_step``, ...) are the x axis, never a scalar of their own.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from synthkit.errors import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator
    from PIL import Image

__all__ = ["AUTO", "TRACKERS", "init_kwargs", "log_image", "resolve_trackers", "tags"]

logger = logging.getLogger(__name__)

AUTO = "auto"
#: tracker -> (the modules it needs, the synthkit extra that installs them)
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard",), "tensorboard"),
    "mlflow": (("mlflow",), "mlflow"),
    "wandb": (("wandb",), "wandb"),
}
#: the local MLflow store (sqlite) needs these on top of mlflow-skinny
MLFLOW_LOCAL_STORE = ("sqlalchemy", "alembic")
#: keys that count (the x axis), never logged as a scalar
COUNTERS = ("epoch", "step", "pretrain_step", "diffusion_step")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def resolve_trackers(names: tuple[str, ...]) -> list[str]:
    """The trackers to start for ``train.trackers``: ``("auto",)`` is TensorBoard when it is installed
    (and none otherwise, said once in the log); any other name must be installed, or a ConfigError names
    the extra that installs it."""
    if tuple(names) == (AUTO,):
        if _installed("tensorboard"):
            return ["tensorboard"]
        logger.info("no tracker: train.trackers is auto and tensorboard is not installed (metrics.jsonl)")
        return []
    out = []
    for name in names:
        modules, extra = TRACKERS[name]
        if name == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI"):
            modules = modules + MLFLOW_LOCAL_STORE
        missing = [m for m in modules if not _installed(m)]
        if missing:
            raise ConfigError(
                f"train.trackers: {name} needs the {', '.join(missing)} package"
                f"{'s' if len(missing) > 1 else ''}: pip install 'synthkit[{extra}]' (or drop {name})"
            )
        out.append(name)
    return out


def init_kwargs(trackers: list[str], run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each tracker's arguments for ``Accelerator.init_trackers``: where it writes, the run's name."""
    kwargs: dict[str, dict[str, Any]] = {}
    if "mlflow" in trackers:
        kwargs["mlflow"] = {"run_name": run_dir.name}
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            import mlflow

            mlflow.set_tracking_uri(mlflow_uri(run_dir))
            kwargs["mlflow"]["logging_dir"] = str((run_dir / "mlartifacts").resolve())
    if "wandb" in trackers:
        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        kwargs["wandb"] = {"name": run_dir.name, "dir": str(run_dir)}
    return kwargs


def mlflow_uri(run_dir: Path) -> str:
    """The tracking URI of a run's own MLflow store (when ``MLFLOW_TRACKING_URI`` is not set)."""
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def namespace(record: dict[str, Any]) -> str:
    """What a record without an explicit namespace is, from its keys (producers log through one call)."""
    if "pretrain_step" in record:
        return "pretrain"
    if record.get("stage") == "diffusion":
        return "diffusion"
    if any(k.startswith("pool_") for k in record):
        return "pool"
    return "train"


def tags(record: dict[str, Any], ns: str) -> dict[str, float]:
    """The record's numbers as namespaced tracker tags: ``epoch_loss_cl`` -> ``epoch/loss_cl``,
    ``pool_hardness`` -> ``pool/hardness``, ``loss_diffusion`` -> ``diffusion/loss``; counters dropped."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in COUNTERS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = key.removeprefix(f"{ns}_").removesuffix(f"_{ns}")
        out[f"{ns}/{name}"] = value
    return out


def tracker_step(record: dict[str, Any], ns: str, step: int) -> int:
    """The x value of a record: GAN pre-training and diffusion stage 1 count their own steps (they run
    before the encoder's first step, whose counter is still 0)."""
    own = {"pretrain": "pretrain_step", "diffusion": "diffusion_step"}.get(ns)
    value = record.get(own) if own else None
    return value if isinstance(value, int) and not isinstance(value, bool) else step


def log_image(accelerator: Accelerator, tag: str, image: Image.Image, step: int, epoch: int) -> None:
    """Log one image (a sample grid) to every started tracker, each in its own idiom."""
    if not accelerator.is_main_process:
        return
    array = np.asarray(image)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, array, step, dataformats="HW" if array.ndim == 2 else "HWC")
            tracker.writer.flush()
        elif tracker.name == "wandb":
            tracker.log_images({tag: [image]}, step=step)
        elif tracker.name == "mlflow":
            import mlflow

            mlflow.log_image(image, artifact_file=f"{tag}/epoch_{epoch:04d}.png")
