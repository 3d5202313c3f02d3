"""The loop's own resumable state, stored as safetensors + JSON (never pickle) inside a checkpoint.

Accelerate's ``save_state`` covers models, optimizers and RNG states; this covers what it cannot know:
the epoch and step counters, the current condition assignment, and the generator's EMA copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

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


def save_loop_state(directory: Path, state: LoopState, producer: HardSampleProducer | None) -> None:
    meta = {"epoch": state.epoch, "step": state.step}
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
    (directory / STATE_JSON).write_text(json.dumps(meta, indent=2))


def load_loop_state(directory: Path, producer: HardSampleProducer | None) -> LoopState:
    meta = json.loads((directory / STATE_JSON).read_text())
    tensors = load_file(str(directory / STATE_TENSORS))
    state = LoopState(epoch=meta["epoch"], step=meta["step"])
    if "conditions" in meta:
        c = meta["conditions"]
        state.conditions = Conditions(tensors["condition_labels"], c["num_classes"], c["source"])
    if "seen" in tensors:
        state.seen = list(tensors["seen"].unbind(0))
    if producer is not None:
        ema = load_file(str(directory / EMA_TENSORS))
        producer.ema.load_state_dict(ema)
    return state
