"""GAN pre-training (``generator.pretrain_steps``) and starting a run's GAN from another (``init_run``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthkit.config import ConfigError
from synthkit.encoders.model import Encoder
from synthkit.run_files.checkpoint import CheckpointError
from synthkit.run_files.final import load_final
from synthkit.training.loop import RunError, train
from tests.conftest import tiny_config

PRE = ("--train.epochs=0", "--generator.pretrain_steps=12", "--train.log_every=4")


def _weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / f"{name}.safetensors")


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float((a[k].float() - b[k].float()).norm()) for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("pre") / "gan"
    train(tiny_config(*PRE), run, progress=False)
    return run


def test_pretraining_trains_the_gan_alone(pretrained: Path) -> None:
    cfg = tiny_config(*PRE)
    recs = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    pre = [r for r in recs if "pretrain_step" in r]
    assert [r["pretrain_step"] for r in pre] == [4, 8, 12]
    assert all("loss_d" in r and "loss_g_adv" in r and "loss_cl" not in r for r in pre)
    assert not [r for r in recs if "loss_cl" in r]  # no encoder step
    # the encoder is its seeded initialisation, untouched
    torch.manual_seed(cfg.train.seed)
    fresh = Encoder(cfg.encoder, 1)
    enc = _weights(pretrained, "encoder")
    assert all(torch.equal(enc[k], v) for k, v in fresh.state_dict().items())
    # D is published with G, for other runs to start from
    meta = json.loads((pretrained / "final" / "final.json").read_text())
    assert {"encoder", "generator_ema", "discriminator"} == set(meta["hashes"])
    art = load_final(pretrained)
    assert art.conditions is not None and art.conditions.num_classes == cfg.conditions.k


def test_pretraining_is_deterministic(pretrained: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    train(tiny_config(*PRE), again, progress=False)
    for name in ("generator_ema", "discriminator", "conditions"):
        assert (again / "final" / f"{name}.safetensors").read_bytes() == (
            pretrained / "final" / f"{name}.safetensors"
        ).read_bytes(), name


def test_pairs_restart_from_the_pretrained_generator(tmp_path: Path) -> None:
    run = tmp_path / "pairs"
    cfg = tiny_config(*PRE, "--hpg.enabled=true", "--hpg.init_noise=0.1")
    train(cfg, run, progress=False)
    g, a, b = (_weights(run, n) for n in ("generator_ema", "generator_a_ema", "generator_b_ema"))
    # G_a starts as the pre-trained G (its EMA), G_b as a copy perturbed by init_noise of each tensor's scale
    assert all(torch.equal(g[k], a[k]) for k in g)
    moved = [k for k in a if a[k].is_floating_point() and a[k].numel() > 1 and not torch.equal(a[k], b[k])]
    assert moved
    for k in moved:
        if "running" in k or "num_batches" in k:
            continue
        rel = float((b[k] - a[k]).std() / a[k].std())
        assert 0.05 < rel < 0.2, (k, rel)


def test_a_run_starts_from_a_pretrained_gan(pretrained: Path, tmp_path: Path) -> None:
    run = tmp_path / "joint"
    res = train(tiny_config(f"--generator.init_run={pretrained}", "--train.epochs=1"), run, progress=False)
    assert res.summary["generator_init"]["run"] == str(pretrained)
    pre_hashes = json.loads((pretrained / "final" / "final.json").read_text())["hashes"]
    assert res.summary["generator_init"]["hashes"] == pre_hashes
    # G's steps count its init run's: 12 pre-training steps + this run's joint steps
    meta = json.loads((run / "final" / "final.json").read_text())
    assert meta["producer"]["generator_steps"] == 12 + meta["steps"] and meta["steps"] > 0
    fresh = tmp_path / "fresh"
    train(tiny_config("--train.epochs=1"), fresh, progress=False)
    start = _weights(pretrained, "generator_ema")
    # a few steps at lr 2e-4 from the pre-trained G stay near it; a G from scratch is far from it
    assert _distance(_weights(run, "generator_ema"), start) < 0.5 * _distance(
        _weights(fresh, "generator_ema"), start
    )
    d_start = _weights(pretrained, "discriminator")
    assert _distance(_weights(run, "discriminator"), d_start) < 0.5 * _distance(
        _weights(fresh, "discriminator"), d_start
    )


def test_resume_after_pretraining_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    args = ("--generator.pretrain_steps=5", "--hpg.enabled=true", "--hpg.warmup_epochs=1")
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_config(*args), full, progress=False)
    train(tiny_config(*args, "--train.epochs=1"), part, progress=False)
    train(tiny_config(*args), part, resume=True, progress=False)
    for name in ("encoder", "generator_ema", "generator_a_ema", "generator_b_ema", "discriminator"):
        a, b = _weights(full, name), _weights(part, name)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"


def test_gan_init_refusals(pretrained: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.epochs"):
        tiny_config("--train.epochs=0")
    with pytest.raises(ConfigError, match="generator.pretrain_steps"):
        tiny_config("--hsg.enabled=false", "--generator.pretrain_steps=3")
    with pytest.raises(ConfigError, match="generator.init_run"):
        tiny_config("--hsg.enabled=false", f"--generator.init_run={pretrained}")
    with pytest.raises(RunError, match="other real data"):
        train(
            tiny_config(f"--generator.init_run={pretrained}", "--data.subset=128"),
            tmp_path / "a",
            progress=False,
        )
    with pytest.raises(RunError, match="g_channels"):
        train(
            tiny_config(f"--generator.init_run={pretrained}", "--generator.g_channels=4"),
            tmp_path / "b",
            progress=False,
        )
    plain = tmp_path / "plain"
    train(tiny_config("--hsg.enabled=false", "--train.epochs=1"), plain, progress=False)
    with pytest.raises(CheckpointError, match="holds no cGAN"):
        train(tiny_config(f"--generator.init_run={plain}"), tmp_path / "c", progress=False)
    with pytest.raises(CheckpointError, match="no finished training run"):
        train(tiny_config(f"--generator.init_run={tmp_path / 'missing'}"), tmp_path / "d", progress=False)


def test_cli_trains_a_gan_alone_and_exports_its_samples(tiny_pipeline: Path, tmp_path: Path, capsys) -> None:
    from synthkit.cli import main

    run, shards = tmp_path / "gan", tmp_path / "shards"
    argv = ["train", str(tiny_pipeline), "--out", str(run), "--no-progress", "--train.epochs=0"]
    assert main([*argv, "--generator.pretrain_steps=4"]) == 0
    assert "trained 0 epochs (0 steps) after 4 GAN pre-training steps" in capsys.readouterr().out
    assert main(["generate", "--run", str(run), "--out", str(shards), "--n", "8", "--no-progress"]) == 0
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["total"] == 8
    # the generator's own steps: its 4 pre-training steps, though the encoder took none
    assert manifest["producer"]["generator_step"] == 4
