"""The loop's own resumable state, stored as safetensors + JSON (never pickle) inside a checkpoint.

Accelerate's ``save_state`` covers models, optimizers and RNG states; the producer and the objective save
their own state next to it (``Producer.save_state``, ``Objective.save``); this covers the loop's counters and,
with ``train.record_indices``, which real images every process saw (indices into the in-memory data as a
tensor, or, streaming from shards, sample keys in the JSON).

Its files are checked against their expected structure before anything is loaded
(``training/checkpoints.py``): ``loop_state.json`` holds exactly ``epoch`` and ``step`` (and ``seen_keys``
when keys are recorded), ``loop_state.safetensors`` the ``seen`` indices (steps x processes x images) or
nothing.
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
    other; ``seen_keys``, when there, one list of sample keys per process for each step."""
    path = directory / STATE_JSON
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    _check_keys(meta, path, optional)
    epoch, step = meta["epoch"], meta["step"]
    if not (_is_count(epoch) and _is_count(step)):
        raise CheckpointError(
            f"{path}: epoch and step must be non-negative integers, got {epoch!r}, {step!r}"
        )
    if "seen_keys" in meta and not _is_key_table(meta["seen_keys"], step):
        raise CheckpointError(f"{path}: seen_keys is not one list of sample keys per process and step")
    return meta


def _check_keys(meta: object, path: Path, optional: frozenset[str]) -> None:
    """``meta`` is a JSON object of ``epoch``, ``step`` and, of ``optional``, any."""
    keys = {"epoch", "step"}
    if isinstance(meta, dict) and keys <= set(meta) <= keys | optional:
        return
    have = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
    raise CheckpointError(
        f"{path} holds {have}, a loop state holds {sorted(keys)} (and {sorted(optional)})"
        if optional
        else f"{path} holds {have}, a loop state holds exactly {sorted(keys)}"
    )


def _is_count(value: object) -> bool:
    """A non-negative int (JSON's ``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_str_lists(value: object) -> bool:
    """A list of lists of strings (one step's sample keys, one list per process)."""
    return isinstance(value, list) and all(
        isinstance(keys, list) and all(isinstance(k, str) for k in keys) for keys in value
    )


def _is_key_table(seen: object, steps: int) -> bool:
    """One entry of sample keys per process for each of ``steps`` steps."""
    return isinstance(seen, list) and len(seen) == steps and all(_is_str_lists(s) for s in seen)


def load_loop_state(directory: Path, optional: frozenset[str] = frozenset()) -> LoopState:
    meta = read_counters(directory, optional)
    tensors = load_state_dict(directory / STATE_TENSORS)
    state = LoopState(epoch=int(meta["epoch"]), step=int(meta["step"]))  # type: ignore[call-overload]
    if "seen" in tensors:
        state.seen = list(tensors["seen"].unbind(0))
    state.seen_keys = list(meta.get("seen_keys", []))  # type: ignore[call-overload]
    return state
