"""The loop's own resumable state, stored as safetensors + JSON (never pickle) inside a checkpoint.

Accelerate's ``save_state`` covers models, optimizers and RNG states; this covers what it cannot know:
the epoch and step counters, the current condition assignment, the generators' EMA copies, MoCo's momentum
encoder and queue, and the adaptive HPG target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from synthkit.producers.conditions import Conditions
from synthkit.producers.hard_samples import HardSampleProducer

STATE_JSON = "loop_state.json"
STATE_TENSORS = "loop_state.safetensors"
EMA_TENSORS = "generator_ema.safetensors"


@dataclass
class LoopState:
    epoch: int = 0
    step: int = 0
    conditions: Conditions | None = None
    seen: list[torch.Tensor] = field(default_factory=list)
    # sample keys per step and rank when streaming from shards (train.record_indices; not checkpointed)
    seen_keys: list[list[list[str]]] = field(default_factory=list)
    # the adaptive HPG schedule's EMA of the encoder's real-positive similarity
    hpg_adaptive: float | None = None


def _module_file(name: str) -> str:
    return f"{name}.safetensors"


def save_loop_state(
    directory: Path,
    state: LoopState,
    producer: HardSampleProducer | None,
    modules: dict[str, nn.Module] | None = None,
) -> None:
    """Write the state; ``modules`` (name -> module outside Accelerate's care) go to ``NAME.safetensors``."""
    meta: dict = {"epoch": state.epoch, "step": state.step, "hpg_adaptive": state.hpg_adaptive}
    tensors: dict[str, torch.Tensor] = {}
    if state.conditions is not None:
        meta["conditions"] = {"num_classes": state.conditions.num_classes, "source": state.conditions.source}
        tensors["condition_labels"] = state.conditions.labels.contiguous()
    if state.seen:
        tensors["seen"] = torch.stack(state.seen).contiguous()
    save_file(tensors, str(directory / STATE_TENSORS))
    if producer is not None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in producer.ema.state_dict().items()},
            str(directory / EMA_TENSORS),
        )
    for name, module in (modules or {}).items():
        tensors_m = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(tensors_m, str(directory / _module_file(name)))
    meta["modules"] = sorted(modules or {})
    (directory / STATE_JSON).write_text(json.dumps(meta, indent=2))


def load_loop_state(
    directory: Path, producer: HardSampleProducer | None, modules: dict[str, nn.Module] | None = None
) -> LoopState:
    meta = json.loads((directory / STATE_JSON).read_text())
    tensors = load_file(str(directory / STATE_TENSORS))
    state = LoopState(epoch=meta["epoch"], step=meta["step"], hpg_adaptive=meta.get("hpg_adaptive"))
    if "conditions" in meta:
        c = meta["conditions"]
        state.conditions = Conditions(tensors["condition_labels"], c["num_classes"], c["source"])
    if "seen" in tensors:
        state.seen = list(tensors["seen"].unbind(0))
    if producer is not None:
        ema = load_file(str(directory / EMA_TENSORS))
        producer.ema.load_state_dict(ema)
    for name, module in (modules or {}).items():
        path = directory / _module_file(name)
        if not path.exists():
            raise FileNotFoundError(
                f"{directory} has no saved state for {name} ({path.name}); was it trained so?"
            )
        module.load_state_dict(load_file(str(path)))
    return state
