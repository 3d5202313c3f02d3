"""A producer that only samples (docs/producers.md): one module and one registry line, run as written.

The page's module is written to a package of its own and registered by the page's one line; a run then
trains with its samples and ``generate`` writes them as a shard set, byte-identical on a rerun, each image the
sampler's own; weights replaced after the run are refused in one line."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from synthkit.errors import SynthkitError
from synthkit.export import generate
from synthkit.images import to_uint8
from synthkit.registry import PRODUCERS
from synthkit.run_files.final import load_final
from synthkit.shards import iter_samples, verify_shard_set
from synthkit.training.loop import train
from synthkit.weights import save_state_dict
from tests.conftest import tiny_config

PAGE = Path(__file__).resolve().parents[2] / "docs" / "producers.md"


def _block(tag: str) -> str:
    found = re.search(
        rf"<!-- {tag}: begin -->\s*```\w+\n(.*?)```\s*<!-- {tag}: end -->", PAGE.read_text(), re.S
    )
    assert found, f"docs/producers.md has no {tag} block"
    return found.group(1)


@pytest.fixture
def tinygan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "my_frozen_gan.py").write_text(_block("frozen-example"))
    monkeypatch.syspath_prepend(str(tmp_path))
    line = _block("frozen-register")
    added = [x[1:] for x in line.splitlines() if x.startswith("+")]
    assert len(added) == 1  # the whole change to synthkit's side: one registry line
    exec(added[0], {"PRODUCERS": PRODUCERS})  # noqa: S102 - the page's line, as a user runs it
    import my_frozen_gan

    torch.manual_seed(1)
    weights = tmp_path / "tiny.safetensors"
    save_state_dict(my_frozen_gan.TinyGenerator(16, 1, 16), weights)
    yield my_frozen_gan, weights
    sys.modules.pop("my_frozen_gan", None)
    PRODUCERS._entries.pop("tinygan", None)
    PRODUCERS._resolved.pop("tinygan", None)


def test_a_frozen_generator_trains_an_encoder_and_exports_shards(tinygan, tmp_path: Path) -> None:
    module, weights = tinygan
    cfg = tiny_config("--generator.kind=tinygan", f"--generator.weights={weights}", "--hsg.enabled=false")
    run = tmp_path / "run"
    res = train(cfg, run, progress=False)
    assert res.summary["weights_in_sync"]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum("hardness_syn" in r for r in records) >= 2  # its samples joined the encoder's steps
    source = json.loads((run / "final" / "final.json").read_text())["producer"]["source"]
    assert source["weights"] == str(weights) and len(source["weights_hash"]) == 64

    out = generate(run, tmp_path / "set", n=12, seed=3, batch_size=5, maxcount=5, progress=False)
    assert verify_shard_set(tmp_path / "set").ok and out.manifest["total"] == 12
    producer = out.manifest["producer"]
    assert producer["generator"] == "tinygan" and producer["kind"] == "hard"
    assert producer["source"]["weights_hash"] == source["weights_hash"]
    samples = list(iter_samples(tmp_path / "set"))
    assert [s["meta"]["kind"] for s in samples] == ["hard"] * 12
    assert all(np.isfinite(s["meta"]["hardness"]) for s in samples)
    # each image is the sampler's: the second chunk (samples 5..9) made again from its seed
    sampler = load_final(run).sampler
    assert isinstance(sampler, module.TinyGanSampler)
    again = to_uint8(sampler.make("hard", 5, 5, 3, None).images)
    for j in range(5):
        assert np.array_equal(samples[5 + j]["image"], again[j])
    assert not np.array_equal(samples[0]["image"], samples[1]["image"])
    # the same request elsewhere: the same bytes
    generate(run, tmp_path / "set2", n=12, seed=3, batch_size=5, maxcount=5, progress=False)
    for a in sorted((tmp_path / "set").glob("*.tar")):
        assert a.read_bytes() == (tmp_path / "set2" / a.name).read_bytes()


def test_weights_replaced_after_the_run_are_refused(tinygan, tmp_path: Path) -> None:
    module, weights = tinygan
    cfg = tiny_config("--generator.kind=tinygan", f"--generator.weights={weights}", "--hsg.enabled=false",
                      "--train.epochs=1", "--train.knn_every=0")  # fmt: skip
    train(cfg, tmp_path / "run", progress=False)
    torch.manual_seed(2)
    save_state_dict(module.TinyGenerator(16, 1, 16), weights)
    with pytest.raises(SynthkitError, match="tiny.safetensors") as err:
        generate(tmp_path / "run", tmp_path / "set", n=4, progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "set").exists() or not any((tmp_path / "set").iterdir())
