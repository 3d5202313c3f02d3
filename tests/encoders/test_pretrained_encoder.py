"""Encoders from your own weights (encoder.weights) and timm backbones by name; nothing downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from synthkit.cli import main
from synthkit.config import EncoderConfig
from synthkit.encoders.model import Encoder, load_encoder_weights
from synthkit.errors import ModelError
from synthkit.logs import error_lines
from synthkit.provenance import state_dict_hash
from synthkit.training.loop import train
from tests.conftest import tiny_config


def test_a_run_starts_from_another_runs_encoder(trained_run: Path, tmp_path: Path) -> None:
    source = trained_run / "final" / "encoder.safetensors"
    # a vanishing learning rate: what the run ends with is what it started from
    cfg = tiny_config(
        "--hsg.enabled=false", f"--encoder.weights={source}", "--train.epochs=1", "--train.lr=1e-30"
    )
    train(cfg, tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())["encoder"]
    assert info["weights_hash"] == state_dict_hash(load_file(source))
    start, end = load_file(source), load_file(tmp_path / "run" / "final" / "encoder.safetensors")
    params = [k for k in start if "running" not in k and "num_batches" not in k]
    assert params and all(torch.allclose(start[k], end[k], atol=1e-6) for k in params)
    fresh = Encoder(cfg.encoder, 1).state_dict()
    assert not torch.equal(fresh["backbone.stem.weight"], end["backbone.stem.weight"])


def test_a_backbone_alone_loads_and_the_head_stays_fresh(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = EncoderConfig(width=4, proj_hidden=8, proj_dim=4)
    donor = Encoder(cfg, 1)
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in donor.backbone.state_dict().items()}, str(path))
    torch.manual_seed(1)
    enc = Encoder(cfg, 1)
    head = {k: v.clone() for k, v in enc.head.state_dict().items()}
    load_encoder_weights(enc, path)
    assert all(
        torch.equal(a, b)
        for a, b in zip(enc.backbone.state_dict().values(), donor.backbone.state_dict().values(), strict=True)
    )
    assert all(torch.equal(head[k], v) for k, v in enc.head.state_dict().items())


def test_weights_of_another_shape_are_one_line_errors(trained_run: Path, tmp_path: Path, capsys) -> None:
    source = trained_run / "final" / "encoder.safetensors"
    argv = [
        "train",
        "pipelines/tiny.yaml",
        "--out",
        str(tmp_path / "x"),
        "--no-progress",
        "--hsg.enabled=false",
    ]
    assert main([*argv, f"--encoder.weights={source}", "--encoder.width=6"]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "does not fit the whole encoder" in err[0] and "encoder.backbone/width" in err[0]
    assert main([*argv, f"--encoder.weights={tmp_path / 'missing.safetensors'}"]) == 2
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "x" / "config.yaml").exists()


def test_timm_backbones_by_name_never_download(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    enc = Encoder(EncoderConfig(backbone="timm/resnet18", small_stem=True, proj_hidden=16, proj_dim=8), 1)
    h = enc.features(torch.rand(2, 1, 32, 32))
    assert h.shape == (2, 512)
    # the small stem keeps 32 px inputs at 4x4 before the last stage instead of 1x1
    assert enc.backbone.model.conv1.stride == (1, 1) and isinstance(
        enc.backbone.model.maxpool, torch.nn.Identity
    )
    with pytest.raises(ModelError, match="will not download"):
        Encoder(EncoderConfig(backbone="timm/resnet18.a1_in1k"), 3)
    with pytest.raises(ModelError, match="never downloads"):
        Encoder(EncoderConfig(backbone="timm/hf-hub:timm/resnet18.a1_in1k"), 3)
    with pytest.raises(ModelError, match="Unknown model"):
        Encoder(EncoderConfig(backbone="timm/no_such_net"), 3)
    with pytest.raises(ModelError, match="no ResNet-style"):
        Encoder(EncoderConfig(backbone="timm/vit_tiny_patch16_224", small_stem=True), 3)
    # with a local file, a tagged name is fine (the tag only names what the file holds)
    donor = Encoder(EncoderConfig(backbone="timm/resnet18", proj_hidden=16, proj_dim=8), 1)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    cfg = EncoderConfig(backbone="timm/resnet18.a1_in1k", proj_hidden=16, proj_dim=8, weights=str(path))
    enc = Encoder(cfg, 1)
    load_encoder_weights(enc, path)
    assert torch.equal(enc.backbone.model.conv1.weight, donor.backbone.model.conv1.weight)


@pytest.mark.slow
def test_a_timm_backbone_trains_in_a_run(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    cfg = tiny_config(
        "--hsg.enabled=false",
        "--encoder.backbone=timm/resnet18",
        "--encoder.small_stem=true",
        "--train.epochs=1",
    )
    res = train(cfg, tmp_path / "run", progress=False)
    assert res.summary["steps"] == 4 and res.summary["weights_in_sync"]
    assert "knn_acc" in res.summary["last_epoch"]
