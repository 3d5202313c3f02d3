"""Pools of diffusion samples as shard sets (the export's writer): layout, determinism, resume, read-back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthkit.config import EncoderConfig, ViewsConfig, from_dict
from synthkit.data.views import Views
from synthkit.encoders.model import Encoder
from synthkit.generators.diffusion import build_unet
from synthkit.objectives.base import build_objective
from synthkit.objectives.scoring import Scorer
from synthkit.producers.diffusion_pools import read_pool
from synthkit.samplers.conditions import Conditions
from synthkit.samplers.diffusion import DiffusionSampler, Settings
from synthkit.samplers.write import SetEvents, SetPlan, write_samples
from synthkit.shards import verify_shard_set

CFG = from_dict(
    {
        "generator": {
            "kind": "diffusion",
            "block_out_channels": [8, 16, 16],
            "norm_num_groups": 4,
            "num_train_timesteps": 50,
            "ddim_steps": 4,
            "sample_batch_size": 4,
        },
        "hpg": {"enabled": True},
    }
)


@pytest.fixture(scope="module")
def parts() -> tuple[DiffusionSampler, Scorer]:
    torch.manual_seed(0)
    unet = build_unet(CFG.generator, 1, 8, num_classes=3)
    producer = DiffusionSampler(CFG, 1, 8, 3, unet=unet)
    producer.conditions = Conditions(torch.tensor([0, 1, 2, 2]), 3, "kmeans")
    producer.trained_steps = 7
    enc = Encoder(EncoderConfig(width=8, proj_hidden=16, proj_dim=8), 1).eval()
    objective = build_objective(CFG.objective, enc, 8, seed=0)
    scorer = Scorer(enc, Views(ViewsConfig(), 1, 8), objective, torch.rand(8, 1, 8, 8))
    return producer, scorer


def _write(parts, out: Path, guidance_scale: float = 0.05, n_pairs: int = 5, **kw):
    sampler, scorer = parts
    producer = sampler.at(Settings(guidance_scale, 0.5))
    plan = SetPlan(
        "pool", {"hard": 6, "pair": 2 * n_pairs}, seed=1, batch_size=4, maxcount=4, manifest_fields={}
    )
    return write_samples(out, plan, producer, scorer, **kw)


def test_pool_holds_hard_samples_and_linked_pairs(parts, tmp_path: Path) -> None:
    res = _write(parts, tmp_path / "p")
    assert res.manifest["total"] == 16 and verify_shard_set(tmp_path / "p").ok
    # one hardness per sample, pairs included; one similarity per pair
    assert len(res.hardness) == 16 and len(res.pair_similarity) == 5
    pool = read_pool(tmp_path / "p")
    assert pool.hard.shape == (6, 1, 8, 8) and pool.pair_a.shape == pool.pair_b.shape == (5, 1, 8, 8)
    assert not torch.equal(pool.pair_a, pool.pair_b)


def test_same_seed_same_bytes_and_interrupted_pool_resumes_identically(parts, tmp_path: Path) -> None:
    full = _write(parts, tmp_path / "full")

    class Stop(Exception):
        pass

    class StopAfter9(SetEvents):
        seen = 0

        def made(self, n: int) -> None:
            self.seen += n
            if self.seen >= 9:
                raise Stop

    with pytest.raises(Stop):
        _write(parts, tmp_path / "cut", events=StopAfter9())
    assert not (tmp_path / "cut" / "manifest.json").exists()
    assert len(list((tmp_path / "cut").glob("pool-*.tar"))) == 2  # two complete shards of 4 stay
    resumed = _write(parts, tmp_path / "cut")
    assert resumed.resumed_from == 8
    assert [s["sha256"] for s in resumed.manifest["shards"]] == [s["sha256"] for s in full.manifest["shards"]]
    assert resumed.hardness == full.hardness  # the kept shards' hardness read back, the rest recomputed
    meta = json.loads((tmp_path / "full" / "manifest.json").read_text())
    assert meta["total"] == 16


def test_guidance_scale_zero_pool_is_the_unguided_pool(parts, tmp_path: Path) -> None:
    a = _write(parts, tmp_path / "a", guidance_scale=0.0, n_pairs=0)
    b = _write(parts, tmp_path / "b", guidance_scale=0.05, n_pairs=0)
    assert a.manifest["shards"][0]["sha256"] != b.manifest["shards"][0]["sha256"]
    assert sum(b.hardness) / 6 != sum(a.hardness) / 6
