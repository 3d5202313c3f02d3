"""Plain contrastive training streamed from a mix of shard sets (real converted + synthetic exported)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthkit.cli import main
from synthkit.config import ConfigError, DataConfig
from synthkit.data.convert import convert_source
from synthkit.export import generate
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
    """``--data`` mixes shard sets; with HSG on (the pipeline's default) the producers train on a streamed
    real set, with ``--hsg.enabled=false`` it is plain CL on a mix of real and synthetic sets."""
    real, syn = shard_sets
    method = tmp_path / "method"
    code = main(
        [
            "train",
            str(tiny_pipeline),
            "--out",
            str(method),
            "--no-progress",
            "--data",
            f"real={real}:1.0",
            "--mix.epoch_samples=256",
        ]
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
    data = ["--data", f"real={real}:0.5", "--data", f"syn={syn}:0.5"]
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


def _refused(capsys, argv: list[str], run: Path) -> str:
    """``synthkit train`` refused: exit 2, one line on stderr besides log records, no traceback, and no run
    directory left behind; returns the line."""
    from synthkit.logs import error_lines

    code = main(argv)
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("synthkit train: error: ")
    assert not run.exists()
    return lines[0]


def test_synthetic_sets_with_the_producer_on_are_refused_naming_both_ways_out(
    shard_sets, tiny_pipeline: Path, tmp_path: Path, capsys
) -> None:
    """Training HSG "on" a mix would make the synthetic set its real data: refused before anything is written,
    naming the switch for plain CL and the real-only alternative."""
    real, syn = shard_sets
    run = tmp_path / "run"
    data = ["--data", f"real={real}:0.5", "--data", f"syn={syn}:0.5"]
    line = _refused(capsys, ["train", str(tiny_pipeline), "--out", str(run), "--no-progress", *data], run)
    assert "syn (kind hard) holds synthetic samples" in line
    assert "--hsg.enabled=false" in line and "only real sets" in line
    line = _refused(
        capsys,
        ["train", str(tiny_pipeline), "--out", str(run), "--no-progress", *data, "--hpg.enabled=true"],
        run,
    )
    assert "--hsg.enabled=false --hpg.enabled=false" in line


def test_duplicate_names_and_weights_not_adding_up_are_one_line_errors(
    shard_sets, tiny_pipeline: Path, tmp_path: Path, capsys
) -> None:
    real, syn = shard_sets
    run = tmp_path / "run"
    base = ["train", str(tiny_pipeline), "--out", str(run), "--no-progress", "--hsg.enabled=false"]
    line = _refused(capsys, [*base, "--data", f"a={real}:0.5", "--data", f"a={syn}:0.5"], run)
    assert "source names must be unique; a given twice" in line
    line = _refused(capsys, [*base, "--data", f"real={real}:0.7", "--data", f"syn={syn}:0.5"], run)
    assert "weights add up to 1.2, not 1 (real 0.7, syn 0.5)" in line
    # thirds written out to three places are fine
    cfg = tiny_config(f'--mix.sources=["a={real}:0.333", "b={syn}:0.333", "c={real}:0.333"]')
    assert len(cfg.mix.sources) == 3
    with pytest.raises(ConfigError, match="add up to 0.9"):
        tiny_config(f'--mix.sources=["a={real}:0.6", "b={syn}:0.3"]')


def test_default_epoch_is_the_real_sets_size_and_each_epoch_records_what_it_drew(
    shard_sets, tmp_path: Path, caplog
) -> None:
    """Without mix.epoch_samples an epoch is the real set's 256 samples: the steps of a real-only run over it
    (256 // 64 = 4), so no real sample is drawn twice; the epoch record and log line say how many samples
    each set gave."""
    import logging

    real, syn = shard_sets
    cfg = tiny_config(_sources(real, syn), "--hsg.enabled=false", "--train.epochs=2", "--train.knn_every=0")
    with caplog.at_level(logging.INFO, logger="synthkit"):
        res = train(cfg, tmp_path / "run", progress=False)
    assert res.summary["steps"] == 2 * (256 // 64)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if "epoch_loss_cl" in r]
    assert len(epochs) == 2
    for rec in epochs:
        assert rec["mix_drawn_real"] + rec["mix_drawn_syn"] == 256  # 4 batches of 64
        assert 0.55 < rec["mix_drawn_real"] / 256 < 0.85  # 0.7 in expectation (binomial, n = 256)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2 and all("mix_drawn_real" in x and "mix_drawn_syn" in x for x in lines)
    assert any(
        "epoch of 256 samples (the real sets' samples) = 4 steps" in r.getMessage() for r in caplog.records
    )


def test_mix_of_mismatched_images_is_refused(shard_sets, tiny_pipeline: Path, tmp_path: Path, capsys) -> None:
    """Sets of different channels, or sizes, are refused before the run directory exists (a half-made one
    would block the rerun), naming each set's shape."""
    real, _ = shard_sets
    rgb, small = tmp_path / "rgb", tmp_path / "small"
    convert_source(DataConfig(name="digits", size=16, channels=3, subset=64), "train", rgb, maxcount=32)
    convert_source(DataConfig(name="digits", size=12, subset=64), "train", small, maxcount=32)
    cfg = tiny_config(f'--mix.sources=["real={real}:0.5", "rgb={rgb}:0.5"]', *MIX_ARGS, "--train.knn_every=0")
    with pytest.raises(ValueError, match="real 16x16 px, 1 channel.*rgb 16x16 px, 3 channel.*must match"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    run = tmp_path / "cli"
    argv = ["train", str(tiny_pipeline), "--out", str(run), "--no-progress", *MIX_ARGS, "--train.knn_every=0"]
    line = _refused(capsys, [*argv, "--data", f"real={real}:0.5", "--data", f"small={small}:0.5"], run)
    assert "real 16x16 px" in line and "small 12x12 px" in line


def test_mix_with_labels_conditions_is_a_config_error(shard_sets) -> None:
    """HSG and HPG stream real data (test_streaming_method.py); true-label conditions do not."""
    real, syn = shard_sets
    with pytest.raises(ConfigError, match="labels conditions need the in-memory real data"):
        tiny_config(_sources(real, syn), "--conditions.mode=labels", "--conditions.allow_labels=true")
