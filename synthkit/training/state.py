"""The loop's own resumable state, stored as safetensors + JSON (never pickle) inside a checkpoint.

Accelerate's ``save_state`` covers models, optimizers and RNG states; the producer and the objective save
their own state next to it (``Producer.save_state``, ``Objective.save``); this covers the loop's counters and,
with ``train.record_indices``, which real images every process saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from synthkit.errors import CheckpointError
from synthkit.weights import load_state_dict, save_state_dict

STATE_JSON = "loop_state.json"
STATE_TENSORS = "loop_state.safetensors"


@dataclass
class LoopState:
    epoch: int = 0
    step: int = 0
    seen: list[torch.Tensor] = field(default_factory=list)
    # sample keys per step and rank when streaming from shards (train.record_indices; not checkpointed)
    seen_keys: list[list[list[str]]] = field(default_factory=list)


def save_loop_state(directory: Path, state: LoopState) -> None:
    tensors = {"seen": torch.stack(state.seen)} if state.seen else {}
    save_state_dict(tensors, directory / STATE_TENSORS)
    (directory / STATE_JSON).write_text(json.dumps({"epoch": state.epoch, "step": state.step}, indent=2))


def load_loop_state(directory: Path) -> LoopState:
    path = directory / STATE_JSON
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        epoch, step = meta["epoch"], meta["step"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (epoch, step)):
        raise CheckpointError(
            f"{path}: epoch and step must be non-negative integers, got {epoch!r}, {step!r}"
        )
    tensors = load_state_dict(directory / STATE_TENSORS)
    state = LoopState(epoch=epoch, step=step)
    if "seen" in tensors:
        state.seen = list(tensors["seen"].unbind(0))
    return state
