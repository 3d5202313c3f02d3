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


def test_two_process_cpu_launch(tiny_pipeline: Path, tmp_path: Path) -> None:
    run = tmp_path / "run2"
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
        str(tiny_pipeline),
        "--out",
        str(run),
        "--no-progress",
        "--train.record_indices=true",
        "--train.epochs=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

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
