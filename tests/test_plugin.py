"""A third party's producer, registered from its own package: the README's plugin example, run as written."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from synthkit.config import load_pipeline
from synthkit.registry import PRODUCERS
from synthkit.training.loop import train
from tests.conftest import tiny_config

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    block = re.search(
        r"<!-- plugin-example: begin -->\s*```python\n(.*?)```\s*<!-- plugin-example: end -->", text, re.S
    )
    assert block, "the README's plugin example is missing"
    return block.group(1)


@pytest.fixture
def plugin_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example as an installed distribution: its module and a dist-info with the entry point."""
    (tmp_path / "synthkit_mixup.py").write_text(_example())
    info = tmp_path / "synthkit_mixup-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: synthkit-mixup\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[synthkit.producers]\nmixup = synthkit_mixup:MixupProducer\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    PRODUCERS.refresh()
    yield tmp_path
    sys.modules.pop("synthkit_mixup", None)
    PRODUCERS._entries.pop("mixup", None)
    PRODUCERS._entries.pop("synthkit_mixup:MixupProducer", None)
    PRODUCERS._resolved.clear()
    PRODUCERS.refresh()


def _trains_with_mixup(cfg, run: Path) -> None:
    res = train(cfg, run, progress=False)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("hardness_syn" in r for r in records if r.get("epoch", 0) >= 1)  # after the warm-up
    assert not any("hardness_syn" in r for r in records if r.get("epoch") == 0 and "loss_cl" in r)
    assert res.summary["weights_in_sync"]


def test_a_producer_registered_by_entry_point(plugin_package: Path, tmp_path: Path) -> None:
    assert "mixup" in PRODUCERS.names()
    cfg = tiny_config("--generator.kind=mixup", "--generator.alpha=0.2")
    assert cfg.generator.alpha == 0.2 and type(cfg.generator).__name__ == "MixupConfig"
    _trains_with_mixup(cfg, tmp_path / "run")
    final = json.loads((tmp_path / "run" / "final" / "final.json").read_text())
    assert final["producer"]["kind"] == "mixup"


def test_a_producer_named_by_import_path(plugin_package: Path, tmp_path: Path) -> None:
    (plugin_package / "synthkit_mixup-0.1.dist-info" / "entry_points.txt").unlink()
    PRODUCERS.refresh()
    overrides = ["--generator.kind=synthkit_mixup:MixupProducer", "--train.epochs=2", "--data.subset=256",
                 "--train.batch_size=64", "--hsg.warmup_epochs=1", "--encoder.width=8", "--train.knn_every=0",
                 "--train.log_every=1"]  # fmt: skip
    cfg = load_pipeline(None, overrides)
    _trains_with_mixup(cfg, tmp_path / "run")
