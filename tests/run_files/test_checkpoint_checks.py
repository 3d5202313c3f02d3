"""The checkpoint checks one at a time: each damaged or foreign file is refused with its one line.

The end-to-end cases (a resume refused with exit code 2, nothing changed) are in
tests/training/test_run_dir.py and tests/cli/test_error_paths.py; here each check of
:mod:`synthkit.run_files.checkpoint` meets a toy model's files, so every message is pinned.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from synthkit.run_files import checkpoint as ckpt
from synthkit.run_files.checkpoint import CheckpointError


def _optimizer(**kwargs: Any) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **kwargs)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return opt


def _saved(tmp_path: Path, edit: Callable[[dict], Any], **kwargs: Any) -> tuple[Path, torch.optim.Optimizer]:
    opt = _optimizer(**kwargs)
    state = opt.state_dict()
    new = edit(state)
    state = state if new is None else new
    path = tmp_path / "optimizer.bin"
    torch.save(state, path)
    return path, opt


def _set(d: dict, key: str, value: Any) -> None:
    d[key] = value


def _del(d: dict, key: str) -> None:
    del d[key]


OPTIMIZER = {
    "not a state": (lambda s: {"state": {}}, "is not an optimizer state (holds ['state']; expected state"),
    "a list": (lambda s: [1, 2], "is not an optimizer state (holds list; expected state, param_groups)"),
    "groups not a list": (lambda s: _set(s, "param_groups", {}), "has no parameter group(s), this run's"),
    "a group too many": (
        lambda s: _set(s, "param_groups", s["param_groups"] * 2),
        "has 2 parameter group(s), this run's optimizer 1",
    ),
    "a group not a mapping": (lambda s: _set(s, "param_groups", [3]), "parameter group 0 is not a mapping"),
    "a group without lr": (
        lambda s: _del(s["param_groups"][0], "lr"),
        "parameter group 0 lacks 'lr'",
    ),
    "a group with a foreign key": (
        lambda s: _set(s["param_groups"][0], "momentum", 0.9),
        "parameter group 0 holds 'momentum', unknown to Adam",
    ),
    "a group of other parameters": (
        lambda s: _set(s["param_groups"][0], "params", [0, 1]),
        "parameter group 0 lists 2 parameters, this run's optimizer 4",
    ),
    "a group's params not a list": (
        lambda s: _set(s["param_groups"][0], "params", 5),
        "parameter group 0 lists ? parameters, this run's optimizer 4",
    ),
    "a non-finite lr": (
        lambda s: _set(s["param_groups"][0], "lr", float("nan")),
        "parameter group 0 has a malformed 'lr'",
    ),
    "a tensor betas": (
        lambda s: _set(s["param_groups"][0], "betas", torch.zeros(2)),
        "parameter group 0 has a malformed 'betas'",
    ),
    "state not a mapping": (lambda s: _set(s, "state", [1]), "its per-parameter state is not a mapping"),
    "state of an unknown parameter": (
        lambda s: _set(s["state"], 9, s["state"][0]),
        "holds state for parameter 9, which this run's optimizer lacks",
    ),
    "state of numbers": (
        lambda s: _set(s["state"][0], "exp_avg", 1.0),
        "the state of parameter 0 is not a mapping of tensors",
    ),
    "a moment missing": (
        lambda s: _del(s["state"][1], "exp_avg"),
        "the state of parameter 1 lacks 'exp_avg'",
    ),
    "a foreign moment": (
        lambda s: _set(s["state"][1], "momentum_buffer", torch.zeros(2)),
        "the state of parameter 1 holds 'momentum_buffer'",
    ),
    "a step that is not finite": (
        lambda s: _set(s["state"][2], "step", torch.tensor(float("inf"))),
        "step of parameter 2 is not finite",
    ),
    "a moment of another shape": (
        lambda s: _set(s["state"][0], "exp_avg_sq", torch.zeros(3, 2)),
        "exp_avg_sq of parameter 0 is torch.float32 [3, 2], the parameter torch.float32 [2, 3]",
    ),
    "a moment of another dtype": (
        lambda s: _set(s["state"][1], "exp_avg", torch.zeros(2, dtype=torch.float64)),
        "exp_avg of parameter 1 is torch.float64 [2], the parameter torch.float32 [2]",
    ),
}


def test_an_untouched_optimizer_state_passes(tmp_path: Path) -> None:
    path, opt = _saved(tmp_path, lambda s: None)
    ckpt.check_optimizer(path, opt)
    path, opt = _saved(tmp_path, lambda s: None, amsgrad=True)
    ckpt.check_optimizer(path, opt)


@pytest.mark.parametrize("case", sorted(OPTIMIZER))
def test_a_damaged_optimizer_state_is_one_line(tmp_path: Path, case: str) -> None:
    edit, expected = OPTIMIZER[case]
    path, opt = _saved(tmp_path, edit)
    with pytest.raises(CheckpointError) as info:
        ckpt.check_optimizer(path, opt)
    text = str(info.value)
    assert text.startswith(f"checkpoint {tmp_path}: optimizer.bin") and "\n" not in text
    assert expected in text, text


def test_amsgrad_needs_its_moment_and_a_missing_file_is_named(tmp_path: Path) -> None:
    def drop_max(state: dict) -> None:
        for entry in state["state"].values():
            del entry["max_exp_avg_sq"]

    path, opt = _saved(tmp_path, drop_max, amsgrad=True)
    with pytest.raises(CheckpointError, match="the state of parameter 0 lacks 'max_exp_avg_sq'"):
        ckpt.check_optimizer(path, opt)
    with pytest.raises(CheckpointError, match=r"optimizer_1.bin is missing"):
        ckpt.check_optimizer(tmp_path / "optimizer_1.bin", opt)


# ---------------------------------------------------------------------------------------------- RNG state
def _rng() -> dict[str, Any]:
    return {
        "random_state": random.getstate(),
        "numpy_random_seed": np.random.get_state(),
        "torch_manual_seed": torch.get_rng_state(),
    }


RNG = {
    "a list": (lambda s: [1], "is not an RNG state (a list)"),
    "no python state": (
        lambda s: {k: v for k, v in s.items() if k != "random_state"},
        "lacks 'random_state'",
    ),
    "a python state of another shape": (
        lambda s: {**s, "random_state": (3, (1, 2), None)},
        "random_state is not a valid state (",
    ),
    "a numpy state of another kind": (
        lambda s: {**s, "numpy_random_seed": ("PCG64", np.zeros(3, dtype=np.uint32), 0, 0, 0.0)},
        "numpy_random_seed is not a valid state (",
    ),
    "a torch state too short": (
        lambda s: {**s, "torch_manual_seed": torch.zeros(3, dtype=torch.uint8)},
        "torch_manual_seed is not a valid state (",
    ),
    "a negative step": (lambda s: {**s, "step": -1}, "step is -1, not a count"),
    "a step of true": (lambda s: {**s, "step": True}, "step is True, not a count"),
    "a device state of floats": (
        lambda s: {**s, "torch_cuda_manual_seed": [torch.zeros(3)]},
        "torch_cuda_manual_seed is not a generator state",
    ),
    "a foreign key": (lambda s: {**s, "notes": 1}, "holds 'notes', which is not an RNG state"),
}


def test_an_rng_state_as_accelerate_writes_it_passes(tmp_path: Path) -> None:
    path = tmp_path / "random_states_0.pkl"
    extra = {"step": 3, "torch_cuda_manual_seed": [torch.get_rng_state()], "xm_seed": 5}
    torch.save({**_rng(), **extra}, path)
    ckpt.check_rng_state(path)


@pytest.mark.parametrize("case", sorted(RNG))
def test_a_foreign_rng_state_is_one_line(tmp_path: Path, case: str) -> None:
    edit, expected = RNG[case]
    path = tmp_path / "random_states_0.pkl"
    torch.save(edit(_rng()), path)
    with pytest.raises(CheckpointError) as info:
        ckpt.check_rng_state(path)
    text = str(info.value)
    assert text.startswith(f"checkpoint {tmp_path}: the RNG state random_states_0.pkl") and "\n" not in text
    assert expected in text, text


# ---------------------------------------------------------------------------------------------- checksums
def _published(tmp_path: Path) -> Path:
    d = tmp_path / "epoch_0001"
    (d / "sub").mkdir(parents=True)
    (d / "a.json").write_text("{}")
    (d / "sub" / "b.bin").write_bytes(b"12345")
    ckpt.write_checksums(d)
    return d


def _sums(d: Path, edit: Callable[[dict], Any]) -> None:
    sums = json.loads((d / ckpt.CHECKSUMS).read_text())
    edit(sums)
    (d / ckpt.CHECKSUMS).write_text(json.dumps(sums))


CHECKSUMS = {
    "no checksums": (lambda d: (d / ckpt.CHECKSUMS).unlink(), "is incomplete: checksums.json is missing"),
    "checksums not JSON": (lambda d: (d / ckpt.CHECKSUMS).write_text("{"), "checksums.json is corrupt ("),
    "checksums empty": (lambda d: (d / ckpt.CHECKSUMS).write_text("{}"), "checksums.json lists no files"),
    "size a bool": (
        lambda d: _sums(d, lambda s: _set(s["a.json"], "bytes", True)),
        "checksums.json has a malformed entry for 'a.json'",
    ),
    "size a string": (
        lambda d: _sums(d, lambda s: _set(s["a.json"], "bytes", "2")),
        "has a malformed entry for 'a.json'",
    ),
    "short digest": (
        lambda d: _sums(d, lambda s: _set(s["a.json"], "sha256", "ab")),
        "has a malformed entry for 'a.json'",
    ),
    "entry a list": (lambda d: _sums(d, lambda s: _set(s, "a.json", [1])), "malformed entry for 'a.json'"),
    "a path outside": (
        lambda d: _sums(d, lambda s: _set(s, "../x", s["a.json"])),
        "has a malformed entry for '../x'",
    ),
    "an absolute path": (
        lambda d: _sums(d, lambda s: _set(s, "/etc/passwd", s["a.json"])),
        "has a malformed entry for '/etc/passwd'",
    ),
    "an empty path": (lambda d: _sums(d, lambda s: _set(s, "", s["a.json"])), "malformed entry for ''"),
    "a file missing": (lambda d: (d / "a.json").unlink(), "file a.json is missing"),
    "a file truncated": (
        lambda d: (d / "sub" / "b.bin").write_bytes(b"12"),
        "file sub/b.bin is truncated or altered (2 bytes, expected 5)",
    ),
    "a file altered": (
        lambda d: (d / "sub" / "b.bin").write_bytes(b"12346"),
        "file sub/b.bin is corrupt (sha256 mismatch)",
    ),
    "a file unlisted": (
        lambda d: (d / "sub" / "c.txt").write_text("x"),
        "file sub/c.txt is not in checksums.json",
    ),
}


@pytest.mark.parametrize("case", sorted(CHECKSUMS))
def test_a_checkpoint_its_checksums_do_not_vouch_for_is_one_line(tmp_path: Path, case: str) -> None:
    edit, expected = CHECKSUMS[case]
    d = _published(tmp_path)
    ckpt.verify_checkpoint(d)
    edit(d)
    with pytest.raises(CheckpointError) as info:
        ckpt.verify_checkpoint(d)
    text = str(info.value)
    assert text.startswith(f"checkpoint {d}") and "\n" not in text and expected in text, text


def test_unlisted_files_may_be_allowed_and_a_missing_directory_is_named(tmp_path: Path) -> None:
    d = _published(tmp_path)
    (d / "notes.txt").write_text("mine")
    ckpt.verify_checkpoint(d, allow_unlisted=True)
    with pytest.raises(CheckpointError, match="epoch_0009 does not exist"):
        ckpt.verify_checkpoint(tmp_path / "epoch_0009")


# ---------------------------------------------------------------------------------------------- structure
def _checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    d = tmp_path / "epoch_0001"
    d.mkdir()
    save_file(model.state_dict(), str(d / "model.safetensors"))
    torch.save(opt.state_dict(), d / "optimizer.bin")
    torch.save(_rng(), d / "random_states_0.pkl")
    (d / "loop_state.json").write_text(json.dumps({"epoch": 1, "step": 4}))
    save_file({"w": torch.zeros(2)}, str(d / "producer_ema.safetensors"))
    (d / "producer_meta.json").write_text("{}")
    return d, model, opt


def _check(d: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int = 0) -> None:
    ckpt.check_structure(
        d,
        models=[model],
        optimizers=[opt],
        rank=rank,
        json_keys={"loop_state.json": {"epoch", "step"}},
        own_prefixes=("producer_",),
    )


STRUCTURE = {
    "a foreign file": (
        lambda d: (d / "pytorch_model.bin").write_bytes(b"x"),
        "pytorch_model.bin is not a file",
    ),
    "a model of other shapes": (
        lambda d: save_file(
            {"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}, str(d / "model.safetensors")
        ),
        "model.safetensors does not fit this run's models: 'weight' is F32 [2, 2], this run's models need",
    ),
    "an optimizer state missing": (lambda d: (d / "optimizer.bin").unlink(), "optimizer.bin is missing"),
    "a damaged RNG state": (
        lambda d: torch.save({**_rng(), "notes": 1}, d / "random_states_0.pkl"),
        "holds 'notes', which is not an RNG state",
    ),
    "a loop state of other keys": (
        lambda d: (d / "loop_state.json").write_text('{"epoch": 1}'),
        "loop_state.json lacks 'step'",
    ),
    "a scaler this run does not use": (
        lambda d: torch.save({"scale": 1.0}, d / "scaler.pt"),
        "scaler.pt is not used by this run (mixed precision differs?)",
    ),
    "a producer file of another kind": (
        lambda d: (d / "producer_x.bin").write_bytes(b"x"),
        "producer_x.bin is not a file of a synthkit checkpoint",
    ),
    "a producer file that is not JSON": (
        lambda d: (d / "producer_meta.json").write_text("{"),
        "producer_meta.json is not JSON",
    ),
    "a producer file that is not safetensors": (
        lambda d: (d / "producer_ema.safetensors").write_bytes(b"xx"),
        "producer_ema.safetensors is not a safetensors file",
    ),
}


@pytest.mark.parametrize("case", sorted(STRUCTURE))
def test_a_checkpoint_of_another_structure_is_one_line(tmp_path: Path, case: str) -> None:
    edit, expected = STRUCTURE[case]
    d, model, opt = _checkpoint(tmp_path)
    _check(d, model, opt)
    edit(d)
    with pytest.raises(CheckpointError) as info:
        _check(d, model, opt)
    text = str(info.value)
    assert text.startswith(f"checkpoint {d}") and "\n" not in text and expected in text, text


def test_a_resume_with_other_processes_is_told_how_many(tmp_path: Path) -> None:
    d, model, opt = _checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"holds no RNG state for process 1: resume it with 1 process"):
        _check(d, model, opt, rank=1)
