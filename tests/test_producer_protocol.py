"""One producer protocol: the cGAN and diffusion producers behave alike wherever a user can see it.

Each test here pins one place where the two generator paths used to disagree (issue 11): what ``--n``
counts, what a pair's hardness means, when the preview is written, resume accounting, the CLI on pair
exports, checkpoints/resume/trackers/MoCo/mixed sources for diffusion runs, verification of the UNet
against the run's hashes, tagged config sections, and the ``attention`` switch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthkit.cli import main
from synthkit.config import ConfigError, load_pipeline
from synthkit.data.sources import load_source
from synthkit.data.views import Views
from synthkit.export import generate
from synthkit.logs import error_lines
from synthkit.objectives.scoring import Scorer, pair_groups, reference_batch
from synthkit.run_files.final import load_final
from synthkit.shards import ShardSetWriter, iter_samples
from synthkit.training.checkpoints import Checkpoints
from synthkit.training.loop import train
from tests.conftest import TINY_DIFFUSION, tiny_config


@pytest.fixture(params=["cgan", "diffusion"])
def run_of(request, pair_run: Path, diffusion_run: Path) -> Path:
    """An HSG+HPG run of each producer kind."""
    return {"cgan": pair_run, "diffusion": diffusion_run}[request.param]


def test_n_counts_samples_per_kind_for_every_producer(run_of: Path, tmp_path: Path) -> None:
    pairs = generate(run_of, tmp_path / "pair", n=10, seed=1, kind="pair", progress=False)
    kinds = [s["meta"]["kind"] for s in iter_samples(tmp_path / "pair")]
    assert pairs.manifest["total"] == 10 and kinds.count("pair_a") == kinds.count("pair_b") == 5
    both = generate(run_of, tmp_path / "all", n=10, seed=1, progress=False)
    kinds = [s["meta"]["kind"] for s in iter_samples(tmp_path / "all")]
    assert both.manifest["total"] == 20 and kinds.count("hard") == 10 and kinds.count("pair_a") == 5


def test_hardness_of_a_pair_is_its_group_loss_for_every_producer(run_of: Path, tmp_path: Path) -> None:
    """Recorded hardness = the run's objective on the chunk with each pair's four views as one group."""
    res = generate(run_of, tmp_path / "p", n=8, seed=2, kind="pair", batch_size=8, progress=False)
    art = load_final(run_of)
    cfg = art.cfg
    real = load_source(cfg.data, "train")
    scorer = Scorer(
        art.encoder,
        Views(cfg.views, real.images.shape[1], real.images.shape[-1]),
        art.objective,
        reference_batch(real.images, cfg.train.batch_size, 2),
        seed=2,
    )
    samples = art.sampler.make("pair", 0, 8, 2, scorer)
    grouped = scorer.hardness(samples.images, 2 * 1_000_003, pair_groups(4))
    alone = scorer.hardness(samples.images, 2 * 1_000_003, None)
    assert res.hardness.tolist() == [round(float(h), 6) for h in grouped]
    assert not torch.allclose(grouped, alone)  # the definition matters: pairs are positives of each other
    described = res.manifest["producer"]["hardness"]
    assert "one positive group" in described


def test_preview_is_published_before_the_manifest(run_of: Path, tmp_path: Path, monkeypatch) -> None:
    order: list[str] = []
    real_replace = os.replace

    def replace(src, dst):
        order.append(Path(dst).name)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    generate(run_of, tmp_path / "x", n=4, seed=0, kind="pair", progress=False)
    assert order.index("preview.png") < order.index("manifest.json")


class _Kill(Exception):
    pass


def test_a_resumed_export_accounts_for_every_sample(run_of: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "r"
    full = generate(run_of, tmp_path / "full", n=24, seed=5, maxcount=4, batch_size=8, progress=False)
    real_write, written = ShardSetWriter.write, []

    def write(self, *args, **kwargs):
        if len(written) == 13:
            raise _Kill
        written.append(1)
        real_write(self, *args, **kwargs)

    monkeypatch.setattr(ShardSetWriter, "write", write)
    with pytest.raises(_Kill):
        generate(run_of, out, n=24, seed=5, maxcount=4, batch_size=8, progress=False)
    monkeypatch.setattr(ShardSetWriter, "write", real_write)
    again = generate(run_of, out, n=24, seed=5, maxcount=4, batch_size=8, progress=False)
    assert again.resumed_from == 12  # three complete shards of 4 were durable
    assert len(again.hardness) == len(again.conditions) == 48
    assert again.hardness.tolist() == full.hardness.tolist()
    assert [s["sha256"] for s in again.manifest["shards"]] == [s["sha256"] for s in full.manifest["shards"]]


def test_cli_pair_export_of_a_diffusion_run_succeeds(diffusion_run: Path, tmp_path: Path, capsys) -> None:
    argv = [
        "generate",
        "--run",
        str(diffusion_run),
        "--out",
        str(tmp_path / "p"),
        "--n",
        "6",
        "--kind",
        "pair",
    ]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "wrote 6 samples" in out and "hardness mean" in out


def test_a_replaced_unet_is_refused_in_one_line(diffusion_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(diffusion_run, run)
    weights = run / "final" / "diffusion" / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import save_file

    state = load_file(weights)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 1.0
    save_file(state, str(weights))
    # the run's checksums and the hash final.json records for the UNet both disagree now; fix the
    # checksums the way a careless copy would, so that the recorded UNet hash is what catches it
    from synthkit.run_files.checkpoint import write_checksums

    write_checksums(run / "final")
    code = main(["generate", "--run", str(run), "--out", str(tmp_path / "x"), "--n", "2", "--no-progress"])
    err = error_lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "does not hold the UNet this run recorded" in err[0]
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_keys_of_another_kind_are_unknown() -> None:
    with pytest.raises(ConfigError, match="unknown key diffusion"):
        load_pipeline(None, ["--diffusion.pool_size=5"])
    with pytest.raises(ConfigError, match=r"unknown key generator\.pool_size.*generator\.kind=cgan"):
        load_pipeline(None, ["--generator.pool_size=5"])
    cfg = load_pipeline(None, ["--generator.kind=diffusion", "--generator.pool_size=5", "--hpg.enabled=true"])
    assert cfg.generator.pool_size == 5
    # a cGAN-only pair key set on a diffusion run would be ignored: an error instead
    with pytest.raises(ConfigError, match="hpg.lambda_pair .*does not use it"):
        load_pipeline(TINY_DIFFUSION, ["--hpg.lambda_pair=3"])


def test_attention_false_saves_a_unet_without_attention(diffusion_run: Path) -> None:
    from diffusers import UNet2DModel
    from diffusers.models.attention_processor import Attention

    assert load_final(diffusion_run).cfg.generator.attention is False
    unet = UNet2DModel.from_pretrained(diffusion_run / "final" / "diffusion" / "unet")
    assert not any(isinstance(m, Attention) for m in unet.modules())


# --------------------------------------------------------------------------- diffusion runs as full runs


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_diffusion_resume_matches_an_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    """Interrupted after epoch 2's checkpoint (UNet trained, one pool written), resumed: same bytes."""
    cfg = load_pipeline(
        TINY_DIFFUSION, ["--objective.name=moco", "--objective.queue_size=64", "--train.checkpoint_every=1"]
    )
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg, full, progress=False)
    real_save = Checkpoints.save

    def save_then_die(self, state, *rest):
        real_save(self, state, *rest)
        if state.epoch == 2:
            raise _Kill

    monkeypatch.setattr(Checkpoints, "save", save_then_die)
    with pytest.raises(_Kill):
        train(cfg, part, progress=False)
    monkeypatch.setattr(Checkpoints, "save", real_save)
    assert not (part / "final").exists()
    train(cfg, part, resume=True, progress=False)
    for name in ("encoder", "objective_momentum", "conditions", "diffusion/unet/diffusion_pytorch_model"):
        a, b = (
            load_file(full / "final" / f"{name}.safetensors"),
            load_file(part / "final" / f"{name}.safetensors"),
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (
            f"{name} differs after resume"
        )
    for pool in ("epoch-0001", "epoch-0002"):
        ma = json.loads((full / "pools" / pool / "manifest.json").read_text())
        mb = json.loads((part / "pools" / pool / "manifest.json").read_text())
        assert [s["sha256"] for s in ma["shards"]] == [s["sha256"] for s in mb["shards"]]
    la, lb = (
        [
            {k: v for k, v in r.items() if k != "seconds"}
            for r in _records(run)
            if "loss_cl" in r or "pool_t_split" in r
        ]
        for run in (full, part)
    )
    assert la == lb
    assert (
        json.loads((part / "summary.json").read_text())["pools"]
        == json.loads((full / "summary.json").read_text())["pools"]
    )


def test_diffusion_runs_write_tracker_logs_and_checkpoints(diffusion_run: Path) -> None:
    pytest.importorskip("tensorboard")
    events = list(diffusion_run.rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file in the diffusion run"
    checkpoints = sorted(p.name for p in (diffusion_run / "checkpoints").glob("epoch_*"))
    assert checkpoints and (diffusion_run / "checkpoints" / checkpoints[-1] / "producer_state.json").is_file()


def test_naive_baseline_of_a_diffusion_run_trains_on_a_shard_mix(diffusion_run: Path, tmp_path: Path) -> None:
    from synthkit.config import DataConfig
    from synthkit.data.convert import convert_source

    real = tmp_path / "real"
    convert_source(DataConfig(name="digits", size=16, subset=128), "train", real, maxcount=32)
    cfg = tiny_config(
        "--hsg.enabled=false",
        "--generator.kind=naive",
        f"--generator.run={diffusion_run}",
        f'--mix.sources=["real={real}:1.0"]',
        "--train.epochs=1",
        "--train.knn_every=0",
    )
    res = train(cfg, tmp_path / "naive", progress=False)
    steps = [r for r in _records(tmp_path / "naive") if "loss_cl" in r]
    assert steps and all("hardness_syn" in r for r in steps) and res.summary["weights_in_sync"]
    final = json.loads((tmp_path / "naive" / "final" / "final.json").read_text())
    assert final["producer"]["source"]["hashes"] == load_final(diffusion_run).hashes


def test_the_naive_pool_of_a_diffusion_run_can_be_remade_for_an_audit(diffusion_run: Path) -> None:
    """What a naive row trains on lives only in its process; ``naive_pool(seed)`` remakes exactly the pool
    its sampler draws from (eval/audit_vs_gain.py audits it), and another seed gives another pool."""
    producer = load_final(diffusion_run).sampler
    cpu = torch.device("cpu")
    pool = producer.naive_pool(3, cpu)
    torch.manual_seed(0)
    drawn = producer.sampler(3)(64, cpu)
    assert pool.shape[0] == 1024 and torch.equal(producer.naive_pool(3, cpu), pool)
    flat = pool.flatten(1)
    # every drawn image is one of the pool's (exactly: it is an index into it)
    assert all(bool((flat == d.flatten()).all(dim=1).any()) for d in drawn)
    assert not torch.equal(producer.naive_pool(4, cpu), pool)
