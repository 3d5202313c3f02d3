"""The joint loop with HPG, MoCo v2 and the naive-synthetic baseline: logs, resume, final artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthkit.config import ConfigError
from synthkit.training.loop import RunError, train
from tests.conftest import tiny_config

ALL = ("--hpg.enabled=true", "--hpg.warmup_epochs=1", "--hpg.schedule=adaptive")
MOCO = ("--objective.name=moco", "--objective.queue_size=96", "--objective.temperature=0.2")


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_hsg_hpg_moco_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_config(*ALL, *MOCO), full, progress=False)
    train(tiny_config(*ALL, *MOCO, "--train.epochs=1"), part, progress=False)
    train(tiny_config(*ALL, *MOCO), part, resume=True, progress=False)
    names = ("encoder", "generator_ema", "generator_a_ema", "generator_b_ema", "conditions")
    for name in names:
        a, b = (
            load_file(full / "final" / f"{name}.safetensors"),
            load_file(part / "final" / f"{name}.safetensors"),
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (
            f"{name} differs after resume"
        )
    la = [r for r in _records(full) if "loss_cl" in r]
    lb = [r for r in _records(part) if "loss_cl" in r]
    for key in ("loss_cl", "pair_similarity", "pair_target", "loss_pair"):
        assert [r[key] for r in la] == [r[key] for r in lb], key
    # the momentum encoder and queue are part of the checkpoint
    last = sorted((part / "checkpoints").glob("epoch_*"))[-1]
    state = load_file(last / "objective_momentum.safetensors")
    assert state["queue"].shape == (96, 16) and int(state["filled"]) > 0


def test_pairs_enter_after_warmup_and_follow_the_schedule(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(
        "--hsg.enabled=false", "--hpg.enabled=true", "--hpg.warmup_epochs=1", "--train.epochs=3"
    )
    train(cfg, run, progress=False)
    steps = [r for r in _records(run) if "loss_cl" in r]
    warm = [r for r in steps if r["epoch"] == 0]
    later = [r for r in steps if r["epoch"] >= 1]
    assert all("hardness_pair" not in r for r in warm) and all("hardness_pair" in r for r in later)
    assert all("loss_g_adv" not in r and "hardness_syn" not in r for r in steps)  # no HSG generator
    targets = [r["pair_target"] for r in steps]
    assert targets[0] == pytest.approx(cfg.hpg.s_start)
    assert all(a >= b for a, b in zip(targets, targets[1:], strict=False))  # linear: never rises
    assert targets[-1] < cfg.hpg.s_start
    final = json.loads((run / "final" / "final.json").read_text())
    assert set(final["hashes"]) == {"encoder", "generator_a_ema", "generator_b_ema", "discriminator"}


def test_naive_synthetic_baseline_uses_a_frozen_generator(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "naive"
    source = (trained_run / "final" / "generator_ema.safetensors").read_bytes()
    cfg = tiny_config(
        "--hsg.enabled=false", "--generator.kind=naive", f"--generator.run={trained_run}", "--train.epochs=1"
    )
    res = train(cfg, run, progress=False)
    steps = [r for r in _records(run) if "loss_cl" in r]
    assert steps and all("hardness_syn" in r and "hardness_real" in r for r in steps)
    assert set(json.loads((run / "final" / "final.json").read_text())["hashes"]) == {"encoder"}
    # the source generator was not changed by being sampled
    assert (trained_run / "final" / "generator_ema.safetensors").read_bytes() == source
    assert res.summary["weights_in_sync"]


def test_naive_baseline_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="takes no part in HSG or HPG"):
        tiny_config("--generator.kind=naive", "--generator.run=somewhere")  # HSG is on in the tiny pipeline
    with pytest.raises(ConfigError, match="generator.run"):
        tiny_config("--hsg.enabled=false", "--generator.kind=naive")
    plain = tmp_path / "plain"
    train(tiny_config("--hsg.enabled=false", "--train.epochs=1"), plain, progress=False)
    with pytest.raises(RunError, match="holds no generator"):
        train(
            tiny_config("--hsg.enabled=false", "--generator.kind=naive", f"--generator.run={plain}"),
            tmp_path / "x",
            progress=False,
        )
