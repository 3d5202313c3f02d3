"""``train.deterministic``: torch's deterministic settings during the run, restored after it; and
``seeded`` leaving the caller's random state alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch.nn.modules.module import register_module_forward_pre_hook

from synthkit.determinism import CUBLAS_WORKSPACE, deterministic_mode, seeded
from synthkit.training.loop import train
from tests.conftest import tiny_config


def _settings() -> tuple:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.get_float32_matmul_precision(),
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )


DETERMINISTIC = (True, False, True, False, False, False, "highest", CUBLAS_WORKSPACE)


def _run_settings(tmp_path: Path, *extra: str) -> set[tuple]:
    """The settings every module forward of a one-epoch run saw (a global torch hook, not a stand-in)."""
    seen: set[tuple] = set()
    handle = register_module_forward_pre_hook(lambda module, args: seen.add(_settings()))
    try:
        cfg = tiny_config("--hsg.enabled=false", "--train.epochs=1", "--train.knn_every=0", *extra)
        train(cfg, tmp_path / "run", progress=False)
    finally:
        handle.remove()
    return seen


@pytest.mark.slow
def test_the_flag_applies_the_settings_for_the_run_and_restores_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = _settings()
    assert before != DETERMINISTIC
    seen = _run_settings(tmp_path, "--train.deterministic=true")
    assert seen == {DETERMINISTIC}  # every forward of the run, and strict (no producer)
    assert _settings() == before
    assert _run_settings(tmp_path / "plain") == {before}  # without the flag nothing changes


def test_the_mode_keeps_a_deterministic_workspace_the_environment_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    before = _settings()
    with deterministic_mode(True, warn_only=True) as applied:
        assert applied["cublas"] == ":16:8" and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert _settings() == before
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")  # not a deterministic workspace: replaced
    with deterministic_mode(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":0:0"


def test_the_mode_restores_the_settings_after_an_error() -> None:
    before = _settings()
    with pytest.raises(RuntimeError, match="boom"), deterministic_mode(True):
        raise RuntimeError("boom")
    assert _settings() == before


def test_seeded_draws_from_the_seed_and_restores_the_state() -> None:
    torch.manual_seed(7)
    state = torch.random.get_rng_state()
    queued = len(torch.cuda._lazy_seed_tracker.get_calls())  # torch internals: seeds queued for CUDA's start
    with seeded(3):
        a = torch.rand(4)
    with seeded(3):
        b = torch.rand(4)
    assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert len(torch.cuda._lazy_seed_tracker.get_calls()) == queued
