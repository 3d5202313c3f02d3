"""Plain contrastive training streamed from a mix of shard sets (real converted + synthetic exported)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthkit.cli import main
from synthkit.config import ConfigError, DataConfig
from synthkit.export import generate
from synthkit.shards.convert import convert_source
from synthkit.training.loop import train
from tests.conftest import tiny_config

MIX_ARGS = ("--hsg.enabled=false", "--mix.epoch_samples=256", "--train.epochs=2")


@pytest.fixture(scope="module")
def shard_sets(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mix")
    real = root / "real"
    convert_source(DataConfig(name="digits", size=16, subset=256), "train", real, maxcount=32)
    syn = root / "syn"
    generate(trained_run, syn, n=96, seed=0, maxcount=16, progress=False)
    return real, syn


def _sources(real: Path, syn: Path) -> str:
    return f'--mix.sources=["real={real}:0.7", "syn={syn}:0.3"]'


def test_train_on_a_mix_of_real_and_synthetic_shards(shard_sets, tmp_path: Path) -> None:
    real, syn = shard_sets
    res = train(tiny_config(_sources(real, syn), *MIX_ARGS), tmp_path / "run", progress=False)
    assert res.summary["steps"] == 2 * (256 // 64)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if "epoch_loss_cl" in r]
    assert len(epochs) == 2 and all("knn_acc" in r for r in epochs)  # monitor on the labeled digits
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["data"]["name"] == "mix" and len(run["data"]["mix"]) == 2


def test_mix_resume_matches_uninterrupted(shard_sets, tmp_path: Path) -> None:
    real, syn = shard_sets
    cfg = tiny_config(_sources(real, syn), *MIX_ARGS)
    train(cfg, tmp_path / "full", progress=False)
    train(tiny_config(_sources(real, syn), *MIX_ARGS, "--train.epochs=1"), tmp_path / "part", progress=False)
    train(cfg, tmp_path / "part", resume=True, progress=False)
    a = load_file(tmp_path / "full" / "final" / "encoder.safetensors")
    b = load_file(tmp_path / "part" / "final" / "encoder.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_data_sugar_trains_the_method_or_plain_cl(
    shard_sets, tiny_pipeline: Path, tmp_path: Path, capsys
) -> None:
    """``--data`` mixes shard sets; with HSG on (the pipeline's default) the producers train on the streamed
    mix, with ``--hsg.enabled=false`` it is plain CL on it."""
    real, syn = shard_sets
    data = ["--data", f"real={real}:0.5", "--data", f"syn={syn}:0.5"]
    method = tmp_path / "method"
    code = main(
        ["train", str(tiny_pipeline), "--out", str(method), "--no-progress", *data, "--mix.epoch_samples=256"]
    )
    assert code == 0, capsys.readouterr().err
    recs = [json.loads(x) for x in (method / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss_cl" in r]
    assert (
        steps and "loss_d" in steps[-1] and "hardness_syn" in steps[-1]
    )  # the generator trained after warm-up
    assert json.loads((method / "run.json").read_text())["data"]["name"] == "mix"
    assert "generator_ema" in json.loads((method / "summary.json").read_text())["hashes"]
    run = tmp_path / "cli"
    code = main(
        [
            "train",
            str(tiny_pipeline),
            "--out",
            str(run),
            "--no-progress",
            *data,
            *MIX_ARGS,
            "--train.knn_every=0",
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and "generator_ema" not in summary["hashes"]


def test_mix_of_mismatched_images_is_refused(shard_sets, tmp_path: Path) -> None:
    real, _ = shard_sets
    rgb = tmp_path / "rgb"
    convert_source(DataConfig(name="digits", size=16, channels=3, subset=64), "train", rgb, maxcount=32)
    cfg = tiny_config(f'--mix.sources=["real={real}:0.5", "rgb={rgb}:0.5"]', *MIX_ARGS, "--train.knn_every=0")
    with pytest.raises(ValueError, match="share one HxWxC shape|all sets in a mix must match"):
        train(cfg, tmp_path / "run", progress=False)


def test_mix_with_labels_conditions_is_a_config_error(shard_sets) -> None:
    """HSG and HPG stream real data (test_streaming_method.py); true-label conditions do not."""
    real, syn = shard_sets
    with pytest.raises(ConfigError, match="labels conditions need the in-memory real data"):
        tiny_config(_sources(real, syn), "--conditions.mode=labels", "--conditions.allow_labels=true")
