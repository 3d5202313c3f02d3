"""The loop's own resumable state, stored as safetensors + JSON (never pickle) inside a checkpoint.

Accelerate's ``save_state`` covers models, optimizers and RNG states; the producer and the objective save
their own state next to it (``Producer.save_state``, ``Objective.save``); this covers the loop's counters and,
with ``train.record_indices``, which real images every process saw (indices into the in-memory data as a
tensor, or, streaming from shards, sample keys in the JSON).

Its files are checked against their expected structure before anything is loaded
(``Run.load_checkpoint``): ``loop_state.json`` holds exactly ``epoch`` and ``step`` (and ``seen_keys`` when
keys are recorded), ``loop_state.safetensors`` the ``seen`` indices (steps x processes x images) or nothing.
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
    # sample keys per step and rank when streaming from shards (train.record_indices)
    seen_keys: list[list[list[str]]] = field(default_factory=list)


def save_loop_state(directory: Path, state: LoopState) -> None:
    tensors = {"seen": torch.stack(state.seen)} if state.seen else {}
    save_state_dict(tensors, directory / STATE_TENSORS)
    meta: dict[str, object] = {"epoch": state.epoch, "step": state.step}
    if state.seen_keys:
        meta["seen_keys"] = state.seen_keys
    (directory / STATE_JSON).write_text(json.dumps(meta, indent=2))


def read_counters(directory: Path, optional: frozenset[str] = frozenset()) -> dict[str, object]:
    """``loop_state.json``, checked: ``epoch`` and ``step`` (non-negative counts), ``optional`` keys, no
    other."""
    path = directory / STATE_JSON
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    keys = {"epoch", "step"}
    if not isinstance(meta, dict) or not keys <= set(meta) <= keys | optional:
        have = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(
            f"{path} holds {have}, a loop state holds {sorted(keys)} (and {sorted(optional)})"
            if optional
            else f"{path} holds {have}, a loop state holds exactly {sorted(keys)}"
        )
    epoch, step = meta["epoch"], meta["step"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (epoch, step)):
        raise CheckpointError(
            f"{path}: epoch and step must be non-negative integers, got {epoch!r}, {step!r}"
        )
    if "seen_keys" in meta:
        seen = meta["seen_keys"]
        ok = isinstance(seen, list) and len(seen) == step
        ok = ok and all(
            isinstance(s, list) and all(isinstance(r, list) and all(isinstance(k, str) for k in r) for r in s)
            for s in seen
        )
        if not ok:
            raise CheckpointError(f"{path}: seen_keys is not one list of sample keys per process and step")
    return meta


def load_loop_state(directory: Path, optional: frozenset[str] = frozenset()) -> LoopState:
    meta = read_counters(directory, optional)
    tensors = load_state_dict(directory / STATE_TENSORS)
    state = LoopState(epoch=int(meta["epoch"]), step=int(meta["step"]))  # type: ignore[call-overload]
    if "seen" in tensors:
        state.seen = list(tensors["seen"].unbind(0))
    state.seen_keys = list(meta.get("seen_keys", []))  # type: ignore[call-overload]
    return state
