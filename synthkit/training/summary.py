"""What a finished run reports: its weights' fingerprints on every process, ``summary.json`` and, with
``train.record_indices``, ``indices.json`` (which real images every process saw).

A fingerprint is the float64 sum and sum of squares of a module's synchronised tensors; gathered from every
process they say whether the processes ended with the same weights (``weights_in_sync``), and a non-finite
one stops the run before anything is published.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from torch import nn

from synthkit.errors import RunError
from synthkit.training.state import LoopState

if TYPE_CHECKING:
    from synthkit.objectives.base import Objective
    from synthkit.producers.base import Producer

__all__ = ["check_fingerprints", "fingerprints", "run_summary", "throughput", "write_indices"]


def _fingerprint(tensors: list[torch.Tensor]) -> torch.Tensor:
    flat = torch.cat([t.detach().double().flatten() for t in tensors])
    return torch.stack([flat.sum(), flat.square().sum()])


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


def fingerprints(
    accelerator: Accelerator, encoder: nn.Module, objective: Objective, producer: Producer
) -> dict[str, torch.Tensor]:
    """The fingerprint of each published weight set (the encoder, the producer's, the objective's, e.g.
    MoCo's key encoder and queue) on every process: name -> processes x 2."""
    checks: dict[str, list[torch.Tensor]] = {"encoder": list(encoder.parameters())}
    for name, module in producer.fingerprint_modules().items():
        checks[name] = list(module.parameters())
    for name, module in objective.modules().items():
        checks[name] = _synced_tensors(module)
    world, device = accelerator.num_processes, accelerator.device
    return {k: accelerator.gather(_fingerprint(v).to(device)).view(world, -1) for k, v in checks.items()}


def check_fingerprints(prints: dict[str, torch.Tensor], state: LoopState, checkpoints: Path) -> None:
    """Never publish non-finite weights (a diverged run); every process sees the same gather, so every
    process stops."""
    broken = [k for k, f in prints.items() if not bool(torch.isfinite(f).all())]
    if broken:
        raise RunError(
            f"the {', '.join(broken)} weights are not finite after step {state.step}: nothing was "
            f"published; the last good checkpoint under {checkpoints} is intact (lower train.lr)"
        )


def throughput(epochs: list[dict[str, Any]], batch_size: int, world: int) -> dict[str, Any]:
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


def run_summary(
    state: LoopState,
    prints: dict[str, torch.Tensor],
    hashes: dict[str, str],
    producer: dict[str, Any],
    records: list[dict[str, Any]],
    *,
    batch_size: int,
    world: int,
) -> dict[str, Any]:
    """``summary.json``: epochs, steps, processes, whether the weights agree on every process, the weights'
    hashes, the producer's summary (``producer``), the last epoch's record and the run's throughput (from
    ``records``, the run's ``metrics.jsonl``)."""
    summary: dict[str, Any] = {
        "epochs": state.epoch,
        "steps": state.step,
        "num_processes": world,
        "weights_in_sync": all(bool((f == f[0]).all()) for f in prints.values()),
        "fingerprints": {k: v.tolist() for k, v in prints.items()},
        "hashes": hashes,
        **producer,
    }
    epoch_lines = [r for r in records if "epoch_loss_cl" in r]
    if epoch_lines:
        summary["last_epoch"] = epoch_lines[-1]
    timed = [r for r in records if "epoch_images_per_s" in r]
    if timed:
        summary["throughput"] = throughput(timed, batch_size, world)
    return summary


def write_indices(run_dir: Path, state: LoopState, world: int) -> None:
    """``indices.json``: per process, the real images it saw, step after step (indices into the in-memory
    data, or sample keys when streaming); nothing when none were recorded."""
    if state.seen_keys:
        seen = {f"rank{r}": [k for step in state.seen_keys for k in step[r]] for r in range(world)}
    elif state.seen:
        stacked = torch.cat(state.seen, dim=1)
        seen = {f"rank{r}": stacked[r].tolist() for r in range(world)}
    else:
        return
    (run_dir / "indices.json").write_text(json.dumps(seen))
