"""ResNet stems by image size: the small CIFAR stem up to 64 px, the ImageNet stem above, overridable by
``encoder.stem``, and recorded with the run so that its weights load into the stem they were trained in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from synthkit.config import ConfigError, EncoderConfig, ObjectiveConfig, from_dict
from synthkit.encoders.backbones import SMALL_STEM_MAX_SIZE, resolve_stem
from synthkit.encoders.model import Encoder
from synthkit.objectives.base import build_objective
from synthkit.producers.base import NullProducer
from synthkit.run_files.final import load_final
from synthkit.training.artifacts import publish_final

R18 = {"backbone": "resnet18", "proj_hidden": 16, "proj_dim": 8}


def _last_stage_side(enc: Encoder, size: int) -> int:
    """The side of the feature map the last ResNet stage outputs for ``size`` px inputs."""
    trunk = enc.backbone.trunk
    with torch.no_grad():
        return trunk[:-2](enc.backbone.stem(torch.rand(1, 3, size, size))).shape[-1]


@pytest.mark.parametrize(
    ("size", "stem"),
    [(16, "small"), (32, "small"), (SMALL_STEM_MAX_SIZE, "small"), (65, "standard"), (96, "standard")],
)
def test_auto_picks_the_stem_by_image_size(size: int, stem: str) -> None:
    assert resolve_stem("resnet18", "auto", False, size) == stem
    assert resolve_stem("resnet50", "auto", False, size) == stem


def test_the_standard_stem_is_the_imagenet_stem() -> None:
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(**R18), 3, 96).eval()
    assert enc.stem == "standard"
    conv = enc.backbone.stem
    assert conv.kernel_size == (7, 7) and conv.stride == (2, 2) and conv.padding == (3, 3)
    pools = [m for m in enc.backbone.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 1 and pools[0].stride == 2
    assert _last_stage_side(enc, 96) == 3  # 96 / 32
    small = Encoder(EncoderConfig(**R18), 3, 32).eval()
    assert small.stem == "small" and small.backbone.stem.kernel_size == (3, 3)
    assert not any(isinstance(m, nn.MaxPool2d) for m in small.backbone.modules())
    assert _last_stage_side(small, 32) == 4  # 32 / 8
    # both stems leave the trunk's parameters (and their names) alone: only the first convolution differs
    a, b = enc.state_dict(), small.state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if a[k].shape != b[k].shape] == ["backbone.stem.weight"]


def test_the_config_overrides_the_size() -> None:
    assert Encoder(EncoderConfig(**R18, stem="small"), 3, 224).stem == "small"
    assert Encoder(EncoderConfig(**R18, stem="standard"), 3, 32).stem == "standard"
    assert Encoder(EncoderConfig(width=4, proj_hidden=16, proj_dim=8), 3, 224).stem is None  # convnet


def test_stem_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="encoder.stem"):
        EncoderConfig(**R18, stem="large")
    with pytest.raises(ConfigError, match="encoder.stem.*no choice"):
        EncoderConfig(stem="standard")  # the conv net
    with pytest.raises(ConfigError, match="encoder.small_stem.*contradicts"):
        EncoderConfig(backbone="timm/resnet18", small_stem=True, stem="standard")
    # timm: auto keeps the architecture's own stem; small (or the older small_stem) replaces it
    assert resolve_stem("timm/resnet18", "auto", False, 32) == "standard"
    assert resolve_stem("timm/resnet18", "auto", True, 32) == "small"
    assert resolve_stem("timm/resnet18", "small", False, 224) == "small"


def _publish(tmp_path: Path, size: int, stem_recorded: str | None, built_for: int | None) -> Path:
    cfg = from_dict({"data": {"size": size}, "encoder": R18})
    torch.manual_seed(0)
    enc = Encoder(cfg.encoder, 1, built_for)
    enc.stem = stem_recorded  # what final.json records (None: as a run from before the choice recorded)
    objective = build_objective(ObjectiveConfig(), enc, 8, seed=0)
    run = tmp_path / "run"
    run.mkdir()
    publish_final(run, cfg, enc, objective, NullProducer(), epochs=1, steps=1)
    return run


def test_the_run_records_its_stem_and_loads_into_it(tmp_path: Path) -> None:
    run = _publish(tmp_path, 96, "standard", 96)
    assert json.loads((run / "final" / "final.json").read_text())["stem"] == "standard"
    art = load_final(run)
    assert art.encoder.stem == "standard" and art.encoder.backbone.stem.kernel_size == (7, 7)


def test_a_run_from_before_the_choice_loads_with_the_small_stem(tmp_path: Path) -> None:
    """Such a run built every ResNet with the small stem, whatever its image size: at 96 px ``auto`` would
    now pick the standard stem, but the weights load into the stem they were trained in."""
    run = _publish(tmp_path, 96, None, None)  # built as before: no size known, the small stem
    meta = json.loads((run / "final" / "final.json").read_text())
    assert meta["stem"] is None and meta["config"]["encoder"]["stem"] == "auto"
    art = load_final(run)
    assert art.encoder.stem == "small" and art.encoder.backbone.stem.kernel_size == (3, 3)
