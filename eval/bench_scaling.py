"""Throughput of one, two and three processes training on the same global batch, from the runs' own logs.

Each process count trains the same pipeline (the global ``train.batch_size`` split over the processes) under
``accelerate launch`` (CPU processes, gloo, ``ACCELERATE_USE_CPU=1``) and the figures are read back from
what the loop logged: every epoch's ``epoch_time_s``, ``epoch_step_time_s`` and ``epoch_images_per_s`` in
``metrics.jsonl``, and the run's ``throughput`` in ``summary.json``. The first epoch is reported apart
(start-up: allocator, thread pools, the first all-reduces). Also printed: the first step's contrastive loss,
the same global batch contrasted whole at every process count.

    python eval/bench_scaling.py [--processes 1 2 3] [--batch 96] [--epochs 3] [--threads 1] [--set K=V ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _train(processes: int, run: Path, overrides: list[str], threads: int) -> None:
    cmd = [sys.executable, "-m", "synthkit.cli", "train"]
    if processes > 1:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "synthkit.cli",
            "train",
        ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ACCELERATE_USE_CPU": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    args = [*cmd, str(ROOT / "pipelines" / "tiny.yaml"), "--out", str(run), "--no-progress", *overrides]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n{done.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--batch", type=int, default=96, help="the global batch (divisible by every count)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--subset", type=int, default=1152, help="real images (digits)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="pipeline overrides")
    ap.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = ap.parse_args()
    overrides = [
        f"--train.batch_size={args.batch}",
        f"--train.epochs={args.epochs}",
        f"--data.subset={args.subset}",
        "--train.knn_every=0",
        "--train.checkpoint_every=1000",
        "--train.log_every=1",
        *(f"--{s}" for s in args.set),
    ]
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_scaling-"))
    rows = []
    for p in args.processes:
        run = root / f"p{p}"
        _train(p, run, overrides, args.threads)
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        epochs = [r for r in records if "epoch_images_per_s" in r]
        steady = epochs[1:] or epochs
        t = json.loads((run / "summary.json").read_text())["throughput"]
        first = next(r for r in records if "loss_cl" in r)
        steady_time = sum(r["epoch_time_s"] for r in steady)
        steady_steps = sum(round(r["epoch_time_s"] / r["epoch_step_time_s"]) for r in steady)
        rows.append(
            {
                "processes": p,
                "batch_per_process": args.batch // p,
                "first_epoch_images_per_s": round(epochs[0]["epoch_images_per_s"], 1),
                "images_per_s": round(args.batch * steady_steps / steady_time, 1),
                "images_per_s_per_process": round(args.batch * steady_steps / steady_time / p, 1),
                "step_time_s": round(steady_time / steady_steps, 4),
                "run_images_per_s": round(t["images_per_s"], 1),
                "steps": t["steps"],
                "first_step_loss_cl": round(first["loss_cl"], 4),
            }
        )
    print(f"global batch {args.batch}, {args.epochs} epochs, OMP_NUM_THREADS={args.threads}, runs in {root}")
    head = list(rows[0])
    print(" | ".join(head))
    for r in rows:
        print(" | ".join(str(r[k]) for k in head))
    print(json.dumps({"bench": "scaling", "batch": args.batch, "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
