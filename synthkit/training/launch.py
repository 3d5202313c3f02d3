"""The processes of a run: the Accelerator made from the config, and a launch that formed no group refused.

A launcher (torchrun, ``accelerate launch``, MPI) promises a number of processes in its environment; each
process's Accelerator must count the same number, or every process would train a run of its own into the
same directory. Both checks run before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch.distributed as dist
from accelerate import Accelerator

from synthkit.config import PipelineConfig
from synthkit.errors import RunError
from synthkit.run_files.final import first_line

__all__ = ["check_launch", "make_accelerator", "promised_processes"]

#: where launchers put the number of processes they started: torchrun and ``accelerate launch``, then MPI's
LAUNCHER_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def promised_processes() -> tuple[int, str] | None:
    """The number of processes the launcher started, from its environment (torchrun and ``accelerate
    launch``: WORLD_SIZE; MPI: OMPI_COMM_WORLD_SIZE, PMI_SIZE), and the variable; None when not launched."""
    for var in LAUNCHER_VARIABLES:
        value = os.environ.get(var, "").strip()
        if value:
            try:
                return int(value), var
            except ValueError:
                raise RunError(f"{var}={value!r} is not a number of processes") from None
    return None


def make_accelerator(cfg: PipelineConfig, run_dir: Path, trackers: list[str]) -> Accelerator:
    """The run's Accelerator (precision, trackers, project directory); a process group that cannot be set
    up (torch.distributed's rendezvous, a device) is one RunError line, before anything is written."""
    try:
        return Accelerator(
            mixed_precision=cfg.train.mixed_precision,
            log_with=trackers or None,
            project_dir=str(run_dir),
        )
    except (ValueError, RuntimeError, OSError) as e:
        promised = promised_processes()
        what = f"the {promised[0]} processes the launcher started" if promised else "this process"
        raise RunError(f"cannot set up {what}: {first_line(e)}; nothing was written") from e


def check_launch(accelerator: Accelerator) -> None:
    """Refuse a launch whose processes did not form one group: the launcher promised W processes, but this
    process's Accelerator (or torch's process group) counts another number. Each such process would train a
    run of its own into the same directory. Nothing has been written when this raises."""
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
