"""``loop_state.json`` of a checkpoint, checked before anything of it is loaded (``training/state.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthkit.errors import CheckpointError
from synthkit.training.state import STATE_JSON, LoopState, load_loop_state, read_counters, save_loop_state

KEYS = frozenset({"seen_keys"})


def _write(directory: Path, meta: object) -> Path:
    (directory / STATE_JSON).write_text(json.dumps(meta))
    return directory


@pytest.mark.parametrize(
    ("meta", "optional", "expected"),
    [
        ({"epoch": 1}, frozenset(), r"holds \['epoch'\], a loop state holds exactly \['epoch', 'step'\]"),
        ({"epoch": 1, "step": 4, "seen_keys": []}, frozenset(), "holds exactly"),
        ({"epoch": 1, "step": 4, "x": 0}, KEYS, r"\['epoch', 'step'\] \(and \['seen_keys'\]\)"),
        ([1, 4], frozenset(), "holds list, a loop state"),
        ({"epoch": "two", "step": 4}, frozenset(), "non-negative integers, got 'two', 4"),
        ({"epoch": True, "step": 4}, frozenset(), "non-negative integers, got True"),
        ({"epoch": 1, "step": -1}, frozenset(), "non-negative integers"),
        ({"epoch": 1, "step": 2, "seen_keys": [[["a"]]]}, KEYS, "seen_keys is not one list"),
        ({"epoch": 1, "step": 1, "seen_keys": [["a"]]}, KEYS, "seen_keys is not one list"),
        ({"epoch": 1, "step": 1, "seen_keys": [[["a", 3]]]}, KEYS, "seen_keys is not one list"),
        ({"epoch": 1, "step": 1, "seen_keys": "a"}, KEYS, "seen_keys is not one list"),
    ],
)
def test_a_loop_state_that_is_not_one_is_one_line_naming_the_file(
    tmp_path: Path, meta: object, optional: frozenset[str], expected: str
) -> None:
    with pytest.raises(CheckpointError, match=expected) as caught:
        read_counters(_write(tmp_path, meta), optional)
    assert str(tmp_path / STATE_JSON) in str(caught.value) and "\n" not in str(caught.value)


def test_a_loop_state_that_is_not_json_is_one_line(tmp_path: Path) -> None:
    (tmp_path / STATE_JSON).write_bytes(b"\xff{")
    with pytest.raises(CheckpointError, match="cannot read .*loop_state.json"):
        read_counters(tmp_path)


def test_a_saved_loop_state_reads_back(tmp_path: Path) -> None:
    keys = [[["k0", "k1"], ["k2", "k3"]], [["k4", "k5"], ["k6", "k7"]]]  # steps x processes x samples
    save_loop_state(tmp_path, LoopState(epoch=1, step=2, seen_keys=keys))
    assert read_counters(tmp_path, KEYS) == {"epoch": 1, "step": 2, "seen_keys": keys}
    back = load_loop_state(tmp_path, KEYS)
    assert (back.epoch, back.step, back.seen_keys, back.seen) == (1, 2, keys, [])
    seen = [torch.arange(6).view(2, 3), torch.arange(6, 12).view(2, 3)]
    save_loop_state(tmp_path, LoopState(epoch=1, step=2, seen=seen))
    back = load_loop_state(tmp_path)
    assert back.seen_keys == [] and all(torch.equal(a, b) for a, b in zip(back.seen, seen, strict=True))
