"""``synthkit quickstart``: the whole path on the embedded digits in a few minutes on a CPU.

1. pre-trains the cGAN on realism alone (``QUICKSTART_PRETRAIN_STEPS`` steps, ``OUT/gan``): the naive
   baseline's generator, and the start of the method's;
2. trains HSG from it (the config defaults, also in ``pipelines/quickstart.yaml``, with
   ``generator.init_run`` the pre-trained GAN; ``OUT/run``);
3. exports the hard samples (``OUT/shards``, with its labelled ``preview.png``) and, for comparison, as many
   samples of the pre-trained GAN (``OUT/naive``);
4. verifies the hard set against its manifest, evaluates the encoder (kNN and linear probe);
5. draws ``OUT/comparison.png``: per pseudo-class, real digits, naive samples and hard samples side by side.

``--generator.pretrain_steps=N`` changes the pre-training (0 skips it: no naive set, and HSG starts from
scratch); other overrides apply to the HSG run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from synthkit.atomic import save_image_atomic
from synthkit.config import load_pipeline
from synthkit.data.sources import load_source
from synthkit.evaluate import evaluate
from synthkit.export import generate
from synthkit.images import Panel, labelled_grid
from synthkit.run_files.final import load_final
from synthkit.shards import ShardError, iter_samples, verify_shard_set
from synthkit.training.loop import train

logger = logging.getLogger(__name__)

#: realism-only GAN steps before HSG: enough for the 16 px digits to look like digits on a 2-core CPU
QUICKSTART_PRETRAIN_STEPS = 600
COMPARISON = "comparison.png"
PER_PANEL = 5  # images of each kind in a row of the comparison


def _by_condition(shards: Path, per: int) -> dict[int, list[np.ndarray]]:
    """The first ``per`` images of each condition of a shard set (read with the safe reader)."""
    out: dict[int, list[np.ndarray]] = {}
    for sample in iter_samples(shards):
        c = sample["meta"].get("condition")
        bucket = out.setdefault(-1 if c is None else int(c), [])
        if len(bucket) < per:
            bucket.append(sample["image"])
    return out


def comparison_grid(run_dir: Path, hard: Path, naive: Path | None) -> Any:
    """Real images of each pseudo-class of the run (its final conditions), then samples of the pre-trained
    GAN (naive) and of the HSG run (hard) of the same condition, side by side."""
    art = load_final(run_dir)
    real = load_source(art.cfg.data, "train").images
    conditions = art.conditions
    hard_by = _by_condition(hard, PER_PANEL)
    naive_by = _by_condition(naive, PER_PANEL) if naive is not None else {}
    panels = [Panel("real digits of the pseudo-class", PER_PANEL)]
    if naive is not None:
        panels.append(Panel("naive: pre-trained cGAN", PER_PANEL))
    panels.append(Panel("hard: HSG run", PER_PANEL))
    rows = []
    for c in sorted(hard_by):
        picked = (
            real[(conditions.labels == c).nonzero().flatten()[:PER_PANEL]]
            if conditions is not None and c >= 0 and len(conditions.labels) == len(real)
            else real[:0]
        )
        groups = [list(picked.permute(0, 2, 3, 1).numpy())]
        if naive is not None:
            groups.append(naive_by.get(c, []))
        groups.append(hard_by[c])
        rows.append((f"pseudo-class {c}" if c >= 0 else "unconditional", groups))
    caption = "real | naive | hard, one row per k-means pseudo-class of the encoder"
    return labelled_grid(rows, panels, scale=3, caption=caption)[0]


def quickstart(
    out: str | Path = "runs/quickstart", *, overrides: list[str] | None = None, progress: bool = True
) -> dict[str, Any]:
    out = Path(out)
    t0 = time.perf_counter()
    overrides = list(overrides or [])
    asked = [o for o in overrides if o.startswith("--generator.pretrain_steps=")]
    base = load_pipeline(None, overrides)
    pretrain = base.generator.pretrain_steps if asked else QUICKSTART_PRETRAIN_STEPS
    gan_dir, run_dir = out / "gan", out / "run"
    shard_dir, naive_dir = out / "shards", out / "naive"
    steps = 6 if pretrain else 5
    stage = iter(range(1, steps + 1))

    def say(text: str, *args: Any) -> None:
        logger.info(f"quickstart {next(stage)}/{steps}: {text}", *args)

    if pretrain:
        say(
            "pre-training the cGAN on realism alone for %d steps in %s (naive baseline, HSG's start)",
            pretrain,
            gan_dir,
        )
        gan = [*overrides, "--train.epochs=0", f"--generator.pretrain_steps={pretrain}"]
        train(load_pipeline(None, gan), gan_dir, progress=progress)
        overrides += ["--generator.pretrain_steps=0", f"--generator.init_run={gan_dir}"]
    cfg = load_pipeline(None, overrides)
    say("training HSG for %d epochs in %s", cfg.train.epochs, run_dir)
    train(cfg, run_dir, progress=progress)
    t_train = time.perf_counter() - t0
    say("exporting %d hard samples to %s", cfg.export.n, shard_dir)
    export = generate(run_dir, shard_dir, progress=progress)
    if pretrain:
        say("exporting %d samples of the pre-trained cGAN (naive) to %s", cfg.export.n, naive_dir)
        generate(gan_dir, naive_dir, progress=progress)
    say("verifying the shard set against its manifest")
    report = verify_shard_set(shard_dir)
    if not report.ok:
        raise ShardError("the exported shard set failed verification: " + "; ".join(report.problems))
    say("evaluating the encoder (kNN and linear probe)")
    ev = evaluate(str(run_dir))
    save_image_atomic(out / COMPARISON, comparison_grid(run_dir, shard_dir, naive_dir if pretrain else None))
    h = export.hardness
    conds, counts = np.unique(export.conditions, return_counts=True)
    summary = {
        "out": str(out),
        "gan_dir": str(gan_dir) if pretrain else None,
        "run_dir": str(run_dir),
        "shard_dir": str(shard_dir),
        "naive_dir": str(naive_dir) if pretrain else None,
        "grid": str(shard_dir / "preview.png"),
        "comparison": str(out / COMPARISON),
        "pretrain_steps": pretrain,
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
    gan = f"after {pretrain} realism-only GAN steps" if pretrain else "from scratch"
    summary["text"] = "\n".join(
        [
            f"synthkit quickstart: HSG (cGAN + SimCLR) on the embedded digits, {gan}",
            f"  samples written   {summary['samples']} in {summary['shards']} shard(s), "
            "verified against the manifest",
            f"  hardness          mean {hs['mean']:.4f}  std {hs['std']:.4f}  min {hs['min']:.4f}  "
            f"median {hs['median']:.4f}  max {hs['max']:.4f}",
            f"  conditions        {len(conds)} k-means pseudo-classes, "
            f"{min(counts)}-{max(counts)} samples each",
            f"  encoder           kNN accuracy {ev['knn_accuracy']:.4f}, linear-probe accuracy "
            f"{ev['linear_accuracy']:.4f} (digits held-out test split, {ev['test_images']} images)",
            f"  shards            {shard_dir}" + (f" (naive samples: {naive_dir})" if pretrain else ""),
            f"  comparison        {summary['comparison']} (real | naive | hard, one row per pseudo-class)",
            f"  sample grid       {summary['grid']} (a labelled row per pseudo-class, real digits first)",
            f"  run               {run_dir} (config, metrics.jsonl, checkpoints, final weights)",
            f"  time              {summary['total_seconds']:.0f} s",
        ]
    )
    (out / "quickstart.json").write_text(
        json.dumps({k: v for k, v in summary.items() if k != "text"}, indent=2)
    )
    return summary
