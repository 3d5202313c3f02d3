"""Weights on disk: safetensors only (never pickle), each file with its content hash.

One place turns a module into CPU tensors, writes them, hashes them and reads them back checked, so the
run's final weights, checkpoints and exports all mean the same thing by "the hash of these weights".
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from synthkit.errors import CheckpointError
from synthkit.provenance import state_dict_hash


def cpu_state(module: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A module's (or a state dict's) tensors, detached, on the CPU, contiguous: what safetensors writes."""
    state = module.state_dict() if isinstance(module, nn.Module) else module
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_state_dict(module: nn.Module | dict[str, torch.Tensor], path: Path) -> str:
    """Write the tensors of ``module`` to ``path`` (safetensors); return their content hash."""
    state = cpu_state(module)
    save_file(state, str(path))
    return state_dict_hash(state)


def load_state_dict(path: Path, expected_hash: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file; with ``expected_hash``, its content must hash to that (one-line error)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        text = str(e).strip()  # one line: safetensors' and torch's messages can run to many
        raise CheckpointError(
            f"cannot load {path}: {type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"
        ) from e
    bad = next(
        (k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None
    )
    if bad is not None:
        raise CheckpointError(
            f"{path} holds non-finite values ({bad}): weights of a diverged run are refused"
        )
    if expected_hash is not None and state_dict_hash(state) != expected_hash:
        raise CheckpointError(
            f"{path} does not hold the weights the run recorded (content hash {state_dict_hash(state)[:12]}, "
            f"recorded {expected_hash[:12]}); it was replaced or damaged"
        )
    return state


def load_into(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state)`` with a one-line error naming ``what`` when they do not fit."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else str(e)
        raise CheckpointError(f"{what} does not fit this model: {detail[:200]}") from e
