"""A mix's batch counts at 0 and 2 DataLoader workers, and the images/s of a training run on a mix.

Two shard sets (e.g. Fashion-MNIST's train and test splits, written with ``synthkit shards convert --size 28
--maxcount 1000``) are mixed 0.7 / 0.3 with an epoch of ``--epoch-samples`` samples (default 13,100: a
size at which each worker's share of the old split was no whole number of batches of 256).

1. **Batch counts**: ``MixBatches`` (the loop's streamed batches) on one process, per number of workers:
   ``len(batches)`` (the steps the loop divides epoch means by) against the batches one epoch actually
   yields, and the loader alone's images/s over ``--epochs`` epochs (worker start-up included).
2. **Training** (``--train``): ``synthkit train PIPELINE --hsg.enabled=false --data ...`` for ``--epochs``
   epochs, per number of workers, with every step logged: the steps each epoch ran and its
   ``epoch_images_per_s``.

With ``PYTHONPATH`` pointing at an older checkout it measures that checkout (its ``MixBatches`` takes the same
positional arguments), which is how a before/after comparison is made in one sitting. One JSON line per
measurement, then a table. Run it with ``OMP_NUM_THREADS=1``:

    OMP_NUM_THREADS=1 python eval/bench_mix_loading.py --real SET --other SET [--workers 0 2] [--train]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def batch_counts(sources: list[str], epoch_samples: int, batch: int, workers: int, epochs: int) -> dict:
    import synthkit
    from synthkit.config import MixConfig
    from synthkit.data.batches import MixBatches

    mix = MixConfig(sources=tuple(sources), epoch_samples=epoch_samples, num_workers=workers)
    batches = MixBatches(mix, batch, 0, 1, 0)
    counts, images = [], 0
    started = time.perf_counter()
    for epoch in range(epochs):
        n = 0
        for _, x in batches.epoch(epoch):
            n += 1
            images += len(x)
        counts.append(n)
    seconds = time.perf_counter() - started
    return {
        "what": "batch_counts",
        "synthkit": str(Path(synthkit.__file__).parent.parent),
        "workers": workers,
        "len_batches": len(batches),
        "yielded_per_epoch": counts,
        "loader_images_per_s": round(images / seconds, 1),
    }


def training(
    pipeline: str, sources: list[str], epoch_samples: int, workers: int, epochs: int, overrides: list[str]
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        data = [arg for spec in sources for arg in ("--data", spec)]
        cmd = [
            sys.executable, "-m", "synthkit.cli", "train", pipeline, "--out", str(run), "--no-progress",
            *data, "--hsg.enabled=false", "--train.knn_every=0", f"--train.epochs={epochs}",
            "--train.log_every=1", f"--mix.epoch_samples={epoch_samples}", f"--mix.num_workers={workers}",
            *overrides,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss_cl" in r]
    epochs_recs = [r for r in records if "epoch_images_per_s" in r]
    per_epoch = [sum(1 for r in steps if r.get("epoch") == e) for e in range(epochs)]
    return {
        "what": "training",
        "workers": workers,
        "steps_per_epoch": per_epoch,
        "epoch_images_per_s": [round(r["epoch_images_per_s"], 1) for r in epochs_recs],
        "drawn": [{k: v for k, v in r.items() if k.startswith("mix_drawn_")} for r in epochs_recs],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real", required=True, help="a shard set (weight 0.7)")
    p.add_argument("--other", required=True, help="a second shard set of the same image size (weight 0.3)")
    p.add_argument("--epoch-samples", type=int, default=13_100)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train", action="store_true", help="also time training runs on the mix")
    p.add_argument(
        "--pipeline", default=str(Path(__file__).parents[1] / "pipelines" / "fashion-mnist-hsg.yaml")
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], help="a --section.key=value")
    args = p.parse_args()
    sources = [f"real={args.real}:0.7", f"other={args.other}:0.3"]
    print(f"# load: {os.getloadavg()}", flush=True)
    rows = []
    for workers in args.workers:
        rows.append(batch_counts(sources, args.epoch_samples, args.batch, workers, args.epochs))
        print(json.dumps(rows[-1]), flush=True)
    if args.train:
        for workers in args.workers:
            rows.append(
                training(args.pipeline, sources, args.epoch_samples, workers, args.epochs, args.overrides)
            )
            print(json.dumps(rows[-1]), flush=True)
    print(f"# load: {os.getloadavg()}")
    for row in rows:
        if row["what"] == "batch_counts":
            print(
                f"workers {row['workers']}: len(batches) {row['len_batches']}, "
                f"yielded {row['yielded_per_epoch']}, loader {row['loader_images_per_s']} img/s"
            )
        else:
            print(
                f"workers {row['workers']}: training steps/epoch {row['steps_per_epoch']}, "
                f"{row['epoch_images_per_s']} img/s, drawn {row['drawn']}"
            )


if __name__ == "__main__":
    main()
