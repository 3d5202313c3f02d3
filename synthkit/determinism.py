"""Seeded blocks that leave the caller's randomness alone, and ``train.deterministic``.

:func:`seeded` runs a block from a seed (scoring's views, KID's subsets, encoder guidance) and restores every
generator it touched afterwards, CUDA's included: ``torch.random.fork_rng(devices=[])`` around
``torch.manual_seed`` restores only the CPU generator, so it leaves every CUDA generator re-seeded (and, when
CUDA is not initialised yet, queues that seed for its initialisation).

:func:`deterministic_mode` is what ``train.deterministic: true`` switches on for a training run, and restores
when the run ends: ``torch.use_deterministic_algorithms(True)``, cuDNN's deterministic algorithms without
autotuning (``benchmark`` off), TF32 off for convolutions and matrix products (float32 matmul precision
``highest``), and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS reads it when a process first uses it, so
it is set before the run creates its models; one that the environment sets already is kept). README.md,
"Determinism", says what is then bit-identical, and what is not.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)

CUBLAS_WORKSPACE = ":4096:8"
# the workspace settings cuBLAS is deterministic with (CUDA's documentation, "Results reproducibility")
DETERMINISTIC_WORKSPACES = (":4096:8", ":16:8")
# ops synthkit runs that have no deterministic CUDA backward (torch raises on them when strict): the
# views' crop and resize (one batched grid_sample), through which HSG's and HPG's generator
# gradients and the diffusion producer's guidance flow, and the resize of diffusion samples for the encoder
NONDETERMINISTIC_ON_CUDA = "grid_sample and bilinear interpolate backward (the views' crops and resizes)"


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's generators seeded by ``seed``; restore the caller's state afterwards.

    The CPU generator is seeded, and every CUDA generator when CUDA is initialised (both are restored on
    exit). When CUDA is not initialised its generators are left alone (nothing is queued for its
    initialisation): a block whose work runs on a GPU finds CUDA initialised already.
    """
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed_all(seed)
        yield


def _settings() -> dict:
    return {
        "algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def _apply(s: dict) -> None:
    torch.use_deterministic_algorithms(s["algorithms"], warn_only=s["warn_only"])
    torch.backends.cudnn.deterministic = s["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = s["cudnn_benchmark"]
    torch.backends.cudnn.allow_tf32 = s["cudnn_tf32"]
    torch.set_float32_matmul_precision(s["matmul_precision"])
    torch.backends.cuda.matmul.allow_tf32 = s["matmul_tf32"]  # after the precision, which also sets it
    if s["cublas"] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = s["cublas"]


def strict_possible(producer_active: bool) -> bool:
    """Whether a run can use deterministic algorithms strictly (torch raising on any op without a
    deterministic implementation): everywhere but on CUDA with a producer, whose gradients (or guidance)
    flow back through ops torch has no deterministic CUDA backward for (:data:`NONDETERMINISTIC_ON_CUDA`)."""
    return not (producer_active and torch.cuda.is_available())


@contextlib.contextmanager
def deterministic_mode(enabled: bool, *, warn_only: bool = False) -> Iterator[dict]:
    """``train.deterministic``: within the block, deterministic algorithms only (``warn_only``: torch warns
    on an op without a deterministic implementation instead of raising), cuDNN deterministic and not
    autotuned, TF32 off, and cuBLAS's deterministic workspace. The previous settings come back on exit.
    Yields what was applied (empty when not ``enabled``), for the run's record."""
    if not enabled:
        yield {}
        return
    before = _settings()
    cublas = before["cublas"]
    if cublas not in DETERMINISTIC_WORKSPACES:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            logger.warning(
                "train.deterministic: CUDA was in use before the run set CUBLAS_WORKSPACE_CONFIG=%s; if "
                "cuBLAS ran already it keeps its workspace and matrix products may vary: set the variable in "
                "the environment before starting Python",
                CUBLAS_WORKSPACE,
            )
        cublas = CUBLAS_WORKSPACE
    applied = {
        "algorithms": True,
        "warn_only": warn_only,
        "cudnn_deterministic": True,
        "cudnn_benchmark": False,
        "cudnn_tf32": False,
        "matmul_tf32": False,
        "matmul_precision": "highest",
        "cublas": cublas,
    }
    _apply(applied)
    if warn_only:
        logger.warning(
            "train.deterministic: this run's producer differentiates through ops with no deterministic CUDA "
            "kernel (%s): torch warns on them and they stay non-deterministic; everything else is",
            NONDETERMINISTIC_ON_CUDA,
        )
    try:
        yield dict(applied)
    finally:
        _apply(before)
