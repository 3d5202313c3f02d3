"""The same loop under a two-process CPU launch: disjoint data, identical weights.

accelerate 1.x's ``launch --cpu --num_processes 2`` silently starts ONE process unless mpirun is set up;
two CPU processes need the torch.distributed launcher with the CPU forced, which is what we run here
(and document in the README): ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _launch_two_cpu_processes(*args: str) -> None:
    """``synthkit train`` under a real two-process CPU launch (gloo); fails with the processes' stderr."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "synthkit.cli",
        "train",
        *args,
        "--no-progress",
        "--train.record_indices=true",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_process_cpu_launch(tiny_pipeline: Path, tmp_path: Path) -> None:
    run = tmp_path / "run2"
    _launch_two_cpu_processes(str(tiny_pipeline), "--out", str(run), "--train.epochs=2")

    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_processes"] == 2
    # weights identical on both ranks at the end (DDP keeps them in step)
    assert summary["weights_in_sync"] is True
    for fp in summary["fingerprints"].values():
        assert len(fp) == 2 and fp[0] == fp[1]

    # each rank trained on different real images: disjoint within every epoch
    seen = json.loads((run / "indices.json").read_text())
    r0, r1 = seen["rank0"], seen["rank1"]
    assert len(r0) == len(r1) > 0
    steps = summary["steps"]
    per_epoch = steps // 2
    batch = len(r0) // steps
    for e in range(2):
        a = set(r0[e * per_epoch * batch : (e + 1) * per_epoch * batch])
        b = set(r1[e * per_epoch * batch : (e + 1) * per_epoch * batch])
        assert a and b and not (a & b)

    # only the main process wrote: one line per step in the log, no duplicates
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    step_ids = [r["step"] for r in recs if "loss_cl" in r]
    assert step_ids == sorted(set(step_ids)) and len(step_ids) == steps


def test_two_process_hsg_hpg_moco_stay_in_sync(tiny_pipeline: Path, tmp_path: Path) -> None:
    run = tmp_path / "run_pairs"
    _launch_two_cpu_processes(
        str(tiny_pipeline),
        "--out",
        str(run),
        "--train.epochs=2",
        "--hpg.enabled=true",
        "--hpg.warmup_epochs=1",
        "--objective.name=moco",
        "--objective.queue_size=64",
        "--generator.pretrain_steps=3",
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["weights_in_sync"] is True
    # encoder, HSG generator (pre-trained first, then G_a and G_b restarted from it), G_b, and MoCo's key
    # encoder + queue (keys gathered from both ranks)
    assert {"encoder", "generator", "generator_b", "momentum"} <= set(summary["fingerprints"])
    for fp in summary["fingerprints"].values():
        assert fp[0] == fp[1]


def test_two_process_training_on_a_shard_mix(trained_run: Path, tiny_pipeline: Path, tmp_path: Path) -> None:
    """Streaming a mix with 2 processes x 2 DataLoader workers: every process sees different samples."""
    from synthkit.config import DataConfig
    from synthkit.export import generate
    from synthkit.shards.convert import convert_source

    real, syn = tmp_path / "real", tmp_path / "syn"
    convert_source(DataConfig(name="digits", size=16, subset=256), "train", real, maxcount=32)
    generate(trained_run, syn, n=128, seed=0, maxcount=16, progress=False)
    run = tmp_path / "mixrun"
    _launch_two_cpu_processes(
        str(tiny_pipeline),
        "--out",
        str(run),
        "--data",
        f"real={real}:0.7",
        "--data",
        f"syn={syn}:0.3",
        "--hsg.enabled=false",
        "--mix.num_workers=2",
        "--mix.epoch_samples=256",
        "--train.epochs=2",
        "--train.knn_every=0",
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["weights_in_sync"] is True
    seen = json.loads((run / "indices.json").read_text())
    per_epoch = 256 // 2  # each rank's share of the global epoch
    assert len(seen["rank0"]) == len(seen["rank1"]) == 2 * per_epoch
    sources = set()
    for e in range(2):
        a = seen["rank0"][e * per_epoch : (e + 1) * per_epoch]
        b = seen["rank1"][e * per_epoch : (e + 1) * per_epoch]
        assert len(set(a)) == len(a) and len(set(b)) == len(b)  # no repeats within a rank's epoch
        assert not set(a) & set(b)  # and none across ranks
        sources |= {k.split("/")[0] for k in a + b}
    assert sources == {"real", "syn"}


def test_two_process_diffusion_run(tmp_path: Path) -> None:
    """The diffusion producer under the one loop, with MoCo: UNet under DDP, pools written by rank 0 and read
    by both, encoder, UNet and MoCo's key encoder + queue in sync."""
    run = tmp_path / "diffusion2"
    pipeline = Path(__file__).resolve().parents[2] / "pipelines" / "tiny-diffusion.yaml"
    _launch_two_cpu_processes(
        str(pipeline), "--out", str(run), "--objective.name=moco", "--objective.queue_size=64"
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["weights_in_sync"] is True
    assert {"encoder", "unet", "momentum"} <= set(summary["fingerprints"])
    assert [p["epoch"] for p in summary["pools"]] == [1, 2]
    assert (run / "final" / "diffusion" / "unet" / "config.json").is_file()
