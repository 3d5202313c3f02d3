"""Shared fixtures: a tiny pipeline that trains in seconds on the embedded digits."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthkit.config import PipelineConfig, load_pipeline

TINY = [
    "--data.name=digits",
    "--data.size=16",
    "--data.subset=256",
    "--encoder.width=8",
    "--encoder.proj_hidden=32",
    "--encoder.proj_dim=16",
    "--generator.z_dim=16",
    "--generator.g_channels=8",
    "--generator.d_channels=8",
    "--conditions.k=3",
    "--conditions.refresh_every=1",
    "--hsg.warmup_epochs=1",
    "--hsg.ramp_epochs=1",
    "--train.epochs=2",
    "--train.batch_size=64",
    "--train.checkpoint_every=1",
    "--train.knn_every=1",
    "--train.knn_k=20",
    "--train.log_every=1",
    "--export.n=40",
    "--export.batch_size=16",
    "--export.maxcount=16",
]


def tiny_config(*extra: str) -> PipelineConfig:
    return load_pipeline(None, [*TINY, *extra])


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
