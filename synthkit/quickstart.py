"""``synthkit quickstart``: the whole path on the embedded digits in a few minutes on a CPU.

Trains the HSG pipeline (the config defaults, also in ``pipelines/quickstart.yaml``), exports a shard set
of hard samples, verifies it against its manifest, evaluates the encoder, and summarises.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from synthkit.config import load_pipeline
from synthkit.evaluate import evaluate
from synthkit.export import generate
from synthkit.shards import ShardError, verify_shard_set
from synthkit.training.loop import train

logger = logging.getLogger(__name__)


def quickstart(
    out: str | Path = "runs/quickstart", *, overrides: list[str] | None = None, progress: bool = True
) -> dict[str, Any]:
    out = Path(out)
    t0 = time.perf_counter()
    cfg = load_pipeline(None, overrides)
    run_dir, shard_dir = out / "run", out / "shards"
    logger.info("quickstart 1/4: training HSG for %d epochs in %s", cfg.train.epochs, run_dir)
    train(cfg, run_dir, progress=progress)
    t_train = time.perf_counter() - t0
    logger.info("quickstart 2/4: exporting %d hard samples to %s", cfg.export.n, shard_dir)
    export = generate(run_dir, shard_dir, progress=progress)
    logger.info("quickstart 3/4: verifying the shard set against its manifest")
    report = verify_shard_set(shard_dir)
    if not report.ok:
        raise ShardError("the exported shard set failed verification: " + "; ".join(report.problems))
    logger.info("quickstart 4/4: evaluating the encoder (kNN and linear probe)")
    ev = evaluate(str(run_dir))
    h = export.hardness
    conds, counts = np.unique(export.conditions, return_counts=True)
    summary = {
        "out": str(out),
        "run_dir": str(run_dir),
        "shard_dir": str(shard_dir),
        "grid": str(shard_dir / "preview.png"),
        "samples": export.manifest["total"],
        "shards": len(export.manifest["shards"]),
        "verified": report.ok,
        "hardness": {
            "mean": float(h.mean()),
            "std": float(h.std()),
            "min": float(h.min()),
            "median": float(np.median(h)),
            "max": float(h.max()),
        },
        "conditions": {int(c): int(k) for c, k in zip(conds, counts, strict=True)},
        "knn_accuracy": ev["knn_accuracy"],
        "linear_accuracy": ev["linear_accuracy"],
        "train_seconds": round(t_train, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    hs = summary["hardness"]
    summary["text"] = "\n".join(
        [
            "synthkit quickstart: HSG (cGAN + SimCLR) on the embedded digits",
            f"  samples written   {summary['samples']} in {summary['shards']} shard(s), "
            "verified against the manifest",
            f"  hardness          mean {hs['mean']:.4f}  std {hs['std']:.4f}  min {hs['min']:.4f}  "
            f"median {hs['median']:.4f}  max {hs['max']:.4f}",
            f"  conditions        {len(conds)} k-means pseudo-classes, "
            f"{min(counts)}-{max(counts)} samples each",
            f"  encoder           kNN accuracy {ev['knn_accuracy']:.4f}, linear-probe accuracy "
            f"{ev['linear_accuracy']:.4f} (digits held-out test split, {ev['test_images']} images)",
            f"  shards            {shard_dir}",
            f"  sample grid       {summary['grid']} (one row per condition)",
            f"  run               {run_dir} (config, metrics.jsonl, checkpoints, final weights)",
            f"  time              {summary['total_seconds']:.0f} s",
        ]
    )
    (out / "quickstart.json").write_text(
        json.dumps({k: v for k, v in summary.items() if k != "text"}, indent=2)
    )
    return summary
