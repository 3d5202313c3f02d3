"""Pools of diffusion samples as shard sets (the export's writer): layout, determinism, resume, read-back, and
the trainer's pools (``Pools``): what a step draws, which pools a start keeps, which a checkpoint may name."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from synthkit.config import EncoderConfig, ViewsConfig, from_dict
from synthkit.data.views import Views
from synthkit.encoders.model import Encoder
from synthkit.errors import CheckpointError
from synthkit.generators.diffusion import build_unet
from synthkit.objectives.base import build_objective
from synthkit.objectives.scoring import Scorer
from synthkit.producers.base import StepInput, TrainContext
from synthkit.producers.diffusion_pools import POOLS_DIR, Pools, read_pool
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


def _pools(run_dir: Path, b_hard: int = 3, b_pair: int = 2) -> Pools:
    AcceleratorState._reset_state(reset_partial_state=True)
    acc = Accelerator(cpu=True, mixed_precision="no")
    ctx = TrainContext(CFG, acc, 1, 8, None, None, None, None, run_dir, lambda: None, lambda r: None)  # type: ignore[arg-type]
    return Pools(ctx, b_hard, b_pair, logging.getLogger("test"))


def test_a_pool_holds_each_kind_in_the_proportion_a_step_draws_it(parts, tmp_path: Path) -> None:
    pools = _pools(tmp_path)
    n_pairs = round(CFG.generator.pool_size * 2 / (3 + 2 * 2))
    assert pools.counts == {"hard": CFG.generator.pool_size - 2 * n_pairs, "pair": 2 * n_pairs}
    assert _pools(tmp_path, b_hard=0).counts["hard"] == 0  # HSG off: pairs only
    batch = StepInput(torch.zeros(4, 1, 8, 8), None, epoch=100, t=100.0)
    assert pools.chunks(batch) == []  # nothing to draw before the first pool
    _write(parts, tmp_path / POOLS_DIR / "epoch-0003")
    pools.restore(f"{POOLS_DIR}/epoch-0003", tmp_path / "state.json")
    syn, pair = pools.chunks(batch)
    assert syn.name == "syn" and syn.images.shape == (3, 1, 8, 8) and syn.partner is None
    assert pair.name == "pair" and pair.images.shape == pair.partner.shape == (2, 1, 8, 8)  # type: ignore[union-attr]
    assert pools.chunks(StepInput(torch.zeros(4, 1, 8, 8), None, epoch=0, t=0.0)) == []  # warm-ups


def test_a_start_keeps_only_the_checkpointed_pool_and_a_checkpoint_names_only_pools_of_its_run(
    tmp_path: Path,
) -> None:
    pools = _pools(tmp_path)
    for name in ("epoch-0000", "epoch-0002", "epoch-0004"):
        (tmp_path / POOLS_DIR / name).mkdir(parents=True)
    pools.dir = tmp_path / POOLS_DIR / "epoch-0002"
    assert pools.state() == f"{POOLS_DIR}/epoch-0002"
    pools.clear_stale()
    assert sorted(p.name for p in (tmp_path / POOLS_DIR).iterdir()) == ["epoch-0002"]
    for bad in ("../other-run/pools/epoch-0000", str(tmp_path / POOLS_DIR / "epoch-0002"), 7):
        with pytest.raises(CheckpointError, match="is not a pool of this run"):
            pools.restore(bad, tmp_path / "state.json")
