"""Host syncs and aten ops per training step, counted from outside the loop.

Trains a pipeline (default ``pipelines/tiny.yaml``) with ``train()`` under a ``TorchDispatchMode`` that counts
every aten op and every ``aten._local_scalar_dense`` (the op behind ``.item()``, ``float(t)``, ``bool(t)``,
``int(t)``, ``.tolist()`` of a device tensor: each one a host sync on a GPU). An iteration is everything from
one encoder step's start to the next one's (the data, the producer's contribution, the step, the loop's
bookkeeping); the last epoch's iterations are reported (past every warm-up, so the synthetic chunks ride
along), without the epoch's last iteration (which carries the epoch's end: monitor, log, checkpoint) and
without logging steps (``train.log_every`` is set past the run's length).

    python eval/count_syncs.py [--pipeline pipelines/tiny.yaml] [--set train.epochs=2 ...]

Prints, per configuration (plain SimCLR, HSG, HSG+HPG), the syncs and the aten ops of an iteration (min,
median, max) and a final JSON line. Runs on any synthkit commit (it only uses ``train`` and
``EncoderStep.__call__``), so "before" and "after" are measured by the same script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from synthkit.config import load_pipeline
from synthkit.training import steps as steps_module
from synthkit.training.loop import train

CONFIGS = {
    "plain": ["--hsg.enabled=false"],
    "hsg": [],
    "hsg+hpg": ["--hpg.enabled=true", "--hpg.warmup_epochs=1"],
}


class Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


def count(pipeline: str, overrides: list[str]) -> dict[str, list[int]]:
    cfg = load_pipeline(pipeline, overrides)
    marks: list[tuple[int, int]] = []
    counter = Counter()
    original = steps_module.EncoderStep.__call__

    def marked(self, *args, **kwargs):
        marks.append((counter.syncs, counter.ops))
        return original(self, *args, **kwargs)

    steps_module.EncoderStep.__call__ = marked  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp, counter:
            train(cfg, Path(tmp) / "run", progress=False)
    finally:
        steps_module.EncoderStep.__call__ = original  # type: ignore[method-assign]
    per_epoch = len(marks) // cfg.train.epochs
    last = marks[-per_epoch:]  # the last epoch's step starts: iterations between consecutive ones
    syncs = [b[0] - a[0] for a, b in zip(last, last[1:], strict=False)]
    ops = [b[1] - a[1] for a, b in zip(last, last[1:], strict=False)]
    return {"syncs": syncs, "ops": ops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="pipelines/tiny.yaml")
    ap.add_argument("--set", nargs="*", default=[], help="extra overrides, e.g. train.batch_size=128")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = [
        "--train.epochs=2",
        "--train.log_every=100000",
        "--train.knn_every=0",
        "--train.checkpoint_every=100",
        "--train.trackers=[]",
    ] + [f"--{s}" for s in args.set]
    out = {}
    for name, extra in CONFIGS.items():
        got = count(args.pipeline, base + extra)
        row = {
            k: {"min": min(v), "median": statistics.median(v), "max": max(v), "n": len(v)}
            for k, v in got.items()
        }
        out[name] = row
        print(
            f"{name:8s} syncs/iteration min {row['syncs']['min']} median {row['syncs']['median']} "
            f"max {row['syncs']['max']}; aten ops/iteration median {row['ops']['median']} "
            f"({row['syncs']['n']} iterations)"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
