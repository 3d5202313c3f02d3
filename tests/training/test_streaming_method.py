"""HSG and HPG on real data streamed from shard sets: bounded condition fits, per-batch assignment, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthkit.config import DataConfig, load_pipeline
from synthkit.data.convert import convert_source
from synthkit.export import generate
from synthkit.training.loop import train
from tests.conftest import TINY_DIFFUSION, tiny_config


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stream") / "real"
    convert_source(DataConfig(name="digits", size=16, subset=256), "train", out, maxcount=32)
    return out


def _stream(real: Path, *extra: str) -> list[str]:
    # k-means on 96 of the 256 streamed images; the monitor still reads data.* (the digits)
    return [f'--mix.sources=["real={real}:1.0"]', "--conditions.fit_samples=96", *extra]


def test_hsg_and_hpg_train_on_streamed_real_data(real_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = train(
        tiny_config(*_stream(real_shards, "--hpg.enabled=true", "--hpg.warmup_epochs=1")), run, progress=False
    )
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss_cl" in r]
    assert any("hardness_syn" in r for r in steps) and any("hardness_pair" in r for r in steps)
    assert res.summary["weights_in_sync"] and res.summary["last_epoch"]["knn_acc"] > 0.2
    cond = load_file(run / "final" / "conditions.safetensors")
    # the bounded fit: labels of the 96-image sample, not one per training image; centroids to assign batches
    assert cond["labels"].shape == (96,) and cond["centroids"].shape[0] == 3
    assert torch.allclose(cond["centroids"].norm(dim=1), torch.ones(3), atol=1e-5)
    # exports of a streamed run draw their reference batch from its shard sets
    out = generate(run, tmp_path / "shards", n=16, seed=0, progress=False)
    assert out.manifest["total"] == 32


def test_a_streamed_run_resumes_bit_exactly(real_shards: Path, tmp_path: Path) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_config(*_stream(real_shards)), full, progress=False)
    train(tiny_config(*_stream(real_shards, "--train.epochs=1")), part, progress=False)
    train(tiny_config(*_stream(real_shards)), part, resume=True, progress=False)
    for name in ("encoder", "generator_ema", "conditions"):
        a, b = (
            load_file(full / "final" / f"{name}.safetensors"),
            load_file(part / "final" / f"{name}.safetensors"),
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.slow
def test_the_diffusion_producer_trains_on_streamed_real_data(real_shards: Path, tmp_path: Path) -> None:
    cfg = load_pipeline(TINY_DIFFUSION, _stream(real_shards))
    res = train(cfg, tmp_path / "run", progress=False)
    assert [p["epoch"] for p in res.summary["pools"]] == [1, 2]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("diffusion_step" in r for r in records) and any("hardness_syn" in r for r in records)
    assert load_file(tmp_path / "run" / "final" / "conditions.safetensors")["labels"].shape == (96,)
