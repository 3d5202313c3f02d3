"""Your own GAN generator: built by import path, started from your weights, fine-tuned by HSG, exported, and
usable frozen by the naive baseline; its identity (builder, weight hash) is in every output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from synthkit.cli import main
from synthkit.config import ConfigError
from synthkit.logs import error_lines
from synthkit.provenance import state_dict_hash
from synthkit.training.loop import train
from tests.conftest import tiny_config
from tests.producers.user_gan import TinyGenerator

BUILDER = "tests.producers.user_gan:build"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("user") / "g.safetensors"
    save_file({k: v.contiguous() for k, v in TinyGenerator(16, 1, 16, 3).state_dict().items()}, str(path))
    return path


def test_a_user_generator_is_fine_tuned_by_hsg_and_exported(weights: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(f"--generator.builder={BUILDER}", f"--generator.weights={weights}")
    res = train(cfg, run, progress=False)
    record = json.loads((run / "final" / "final.json").read_text())["producer"]
    saved = state_dict_hash(load_file(weights))
    assert record["generator"]["builder"] == BUILDER and record["generator"]["weights_hash"] == saved
    assert json.loads((run / "run.json").read_text())["producer"]["weights_hash"] == saved
    # HSG fine-tuned it: the published EMA generator moved away from the user's weights, keeping its shapes
    start, final = load_file(weights), load_file(run / "final" / "generator_ema.safetensors")
    assert start.keys() == final.keys() and any(not torch.equal(start[k], final[k]) for k in start)
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("hardness_syn" in r for r in steps) and res.summary["weights_in_sync"]

    out = tmp_path / "shards"
    argv = ["generate", "--run", str(run), "--out", str(out), "--n", "12", "--kind", "hard", "--no-progress"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total"] == 12 and manifest["producer"]["generator"]["builder"] == BUILDER
    assert manifest["producer"]["generator"]["weights_hash"] == saved
    # the export rebuilds the generator by its import path and loads the run's weights, not the user's file
    weights.rename(weights.with_suffix(".moved"))
    try:
        assert main([*argv[:4], str(tmp_path / "again"), *argv[5:]]) == 0
    finally:
        weights.with_suffix(".moved").rename(weights)
    capsys.readouterr()


def test_the_naive_baseline_samples_a_user_generator_frozen(weights: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        "--hsg.enabled=false",
        "--generator.kind=naive",
        f"--generator.builder={BUILDER}",
        f"--generator.weights={weights}",
        "--generator.z_dim=16",
        "--generator.num_classes=3",
        "--train.epochs=1",
    )
    before = weights.read_bytes()
    train(cfg, tmp_path / "naive", progress=False)
    source = json.loads((tmp_path / "naive" / "final" / "final.json").read_text())["producer"]["source"]
    assert source["builder"] == BUILDER and source["weights_hash"] == state_dict_hash(load_file(weights))
    assert weights.read_bytes() == before
    records = [json.loads(x) for x in (tmp_path / "naive" / "metrics.jsonl").read_text().splitlines()]
    assert any("hardness_syn" in r for r in records)


def test_a_user_discriminator_judges_the_generator(weights: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        f"--generator.builder={BUILDER}",
        "--generator.discriminator_builder=tests.producers.user_gan:build_discriminator",
        "--train.epochs=1",
    )
    train(cfg, tmp_path / "run", progress=False)
    d_state = load_file(tmp_path / "run" / "final" / "discriminator.safetensors")
    assert set(d_state) >= {
        "body.0.weight",
        "out.weight",
        "embed.weight",
    }  # the user's D was trained and saved


def test_bad_user_generators_are_one_line_errors(weights: Path, tmp_path: Path, capsys) -> None:
    def run(*extra: str) -> list[str]:
        assert (
            main(["train", "pipelines/tiny.yaml", "--out", str(tmp_path / "x"), "--no-progress", *extra]) == 2
        )
        err = error_lines(capsys.readouterr().err)
        assert len(err) == 1, err
        assert not (tmp_path / "x" / "config.yaml").exists()
        return err

    assert "cannot import" in run("--generator.builder=no_such_module:build")[0]
    assert "images in [0, 1]" in run("--generator.builder=tests.producers.user_gan:build_wrong_range")[0]
    # weights of another shape (conditions.k differs from the generator's class count)
    assert (
        "does not fit"
        in run(f"--generator.builder={BUILDER}", f"--generator.weights={weights}", "--conditions.k=5")[0]
    )
    with pytest.raises(ConfigError, match="generator.weights: needs generator.builder"):
        tiny_config(f"--generator.weights={weights}")
