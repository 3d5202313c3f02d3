"""Shared fixtures: a tiny pipeline that trains in seconds on the embedded digits."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthkit.config import PipelineConfig, load_pipeline

TINY_PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.yaml"


def tiny_config(*extra: str) -> PipelineConfig:
    return load_pipeline(TINY_PIPELINE, list(extra))


@pytest.fixture
def tiny_pipeline(tmp_path: Path) -> Path:
    """The tiny pipeline as a YAML file, for CLI tests."""
    from synthkit.config import save_pipeline

    path = tmp_path / "tiny.yaml"
    save_pipeline(tiny_config(), path)
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny HSG run shared by the tests that only read it."""
    from synthkit.training.joint import train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(), run, progress=False)
    return run
