"""Feature extractors: the in-domain classifier round trip, hashes, the local-only Inception, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthkit.config import DataConfig
from synthkit.metrics.extractors import (
    CLASSIFIER_META,
    CLASSIFIER_WEIGHTS,
    ExtractorError,
    classifier_extractor,
    inception_extractor,
    load_extractor,
    train_classifier,
)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("extractor") / "digits-clf"
    train_classifier(DataConfig(name="digits", size=16), out, epochs=6, batch_size=64, lr=3e-3, width=8)
    return out


def test_trained_classifier_records_its_hash_and_accuracy(classifier_dir: Path) -> None:
    meta = json.loads((classifier_dir / CLASSIFIER_META).read_text())
    assert meta["test_accuracy"] > 0.8  # a real classifier of real digits, not chance (0.1)
    ext = classifier_extractor(classifier_dir)
    assert ext.sha256 == meta["sha256"] and ext.ident == f"classifier:{meta['sha256'][:12]}"
    assert ext.describe()["test_accuracy"] == meta["test_accuracy"]
    images = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)
    feats = ext.features(ext.prepare(images), batch_size=2)
    assert feats.shape == (5, ext.feature_dim) and torch.isfinite(feats).all()
    assert torch.allclose(feats, ext.features(ext.prepare(images), batch_size=5), atol=1e-5)


def test_classifier_refuses_tampered_weights_and_overwrites(classifier_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / CLASSIFIER_META).write_text((classifier_dir / CLASSIFIER_META).read_text())
    data = bytearray((classifier_dir / CLASSIFIER_WEIGHTS).read_bytes())
    data[-1] ^= 1
    (copy / CLASSIFIER_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ExtractorError, match="does not match the sha256"):
        classifier_extractor(copy)
    with pytest.raises(ExtractorError, match="already holds a trained classifier"):
        train_classifier(DataConfig(name="digits", size=16), classifier_dir, epochs=1)
    with pytest.raises(ExtractorError, match="train-extractor"):
        classifier_extractor(tmp_path)


def test_inception_needs_a_local_file_and_never_downloads(tmp_path: Path) -> None:
    with pytest.raises(ExtractorError, match="never downloads"):
        inception_extractor(None)
    with pytest.raises(ExtractorError, match="not found"):
        inception_extractor(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(ExtractorError, match="not a torchvision inception_v3 state dict"):
        inception_extractor(bad)
    with pytest.raises(ExtractorError, match="unknown extractor"):
        load_extractor("clip")


@pytest.mark.slow
def test_inception_from_a_local_weights_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    model = inception_v3(weights=None, aux_logits=True, init_weights=True)
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    ext = inception_extractor(path)
    assert ext.feature_dim == 2048 and ext.ident.startswith("inception:")
    gray = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    feats = ext.features(ext.prepare(gray))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()


def test_default_length_is_enough_steps_and_a_weak_classifier_is_flagged(tmp_path: Path) -> None:
    from synthkit.metrics.extractors import MIN_STEPS, default_batch_size, default_epochs

    assert default_batch_size(60_000) == 256 and default_epochs(60_000, 256) == 10  # 2,350 steps
    # the user's 600-image folder (3 epochs of batches of 256 were 9 steps): batches of 75, 8 per epoch
    assert default_batch_size(600) == 75 and default_epochs(600, 75) * 8 >= MIN_STEPS
    # a classifier that cannot learn (lr ~ 0): near chance, recorded and flagged as weak
    meta = train_classifier(
        DataConfig(name="digits", size=8, subset=200),
        tmp_path / "weak",
        epochs=1,
        batch_size=64,
        lr=1e-9,
        width=4,
    )
    assert meta["weak"] is True and meta["chance_corrected_accuracy"] < 0.5
    assert json.loads((tmp_path / "weak" / CLASSIFIER_META).read_text())["weak"] is True
