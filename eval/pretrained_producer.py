"""A diffusion model trained once and reused as a pretrained producer, against a from-scratch run.

On real Fashion-MNIST (``pipelines/fashion-mnist-diffusion.yaml``: a 10,000-image subset at 28 px):

1. ``pretrain``: a run whose stage 1 trains an unconditional UNet for ``--unet-steps`` steps at its first
   epoch (``conditions.mode=none``, no warm-up, one epoch): its ``final/diffusion`` is the pretrained model;
2. ``pretrained``: a run of ``--epochs`` epochs that uses it (``generator.pretrained``, ``train_steps: 0``):
   no stage 1;
3. ``scratch``: a run of the same ``--epochs`` whose own stage 1 trains the same UNet for the same steps (the
   same total budget as 1 + 2).

Each run exports ``--n`` guided hard samples, which are audited against the real training split in one
in-domain feature space (a classifier trained on Fashion-MNIST, ``synthkit audit train-extractor``). The
table gives wall time per stage, the audit's FID/KID/precision/recall/density/coverage, and the encoders'
kNN and linear accuracy.

    OMP_NUM_THREADS=1 python eval/pretrained_producer.py --out eval/results/pretrained [--unet-steps 2000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "fashion-mnist-diffusion.yaml"
COMMON = ["--conditions.mode=none", "--train.knn_every=0"]


def _synthkit(*args: str) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "synthkit.cli", *args, "--no-progress"], text=True)
    if proc.returncode != 0:
        raise SystemExit(f"synthkit {' '.join(args)} failed ({proc.returncode})")
    return time.perf_counter() - t


def _once(done: Path, *args: str) -> float:
    """Run a synthkit command unless its output exists already (an interrupted study continues)."""
    stamp = done.with_name(done.name + ".seconds")
    if done.exists() and stamp.exists():
        return float(stamp.read_text())
    seconds = _synthkit(*args)
    stamp.write_text(f"{seconds:.1f}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--unet-steps", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    steps = f"--generator.train_steps={args.unet_steps}"
    times: dict[str, dict[str, float]] = {}

    pre = out / "runs" / "pretrain"
    times["pretrain"] = {
        "train": _once(
            pre / "summary.json",
            "train",
            str(PIPELINE),
            "--out",
            str(pre),
            *COMMON,
            steps,
            "--train.epochs=1",
            "--hsg.warmup_epochs=0",
            "--hpg.warmup_epochs=0",
            "--generator.pool_size=64",
        ),  # fmt: skip
    }
    model = pre / "final" / "diffusion"
    runs = {
        "pretrained": [f"--generator.pretrained={model}", "--generator.train_steps=0"],
        "scratch": [steps],
    }
    extractor = out / "classifier"
    times["classifier"] = {
        "train": _once(
            extractor / "extractor.json",
            "audit",
            "train-extractor",
            "--data",
            "fashion-mnist",
            "--size",
            "28",
            "--epochs",
            "3",
            "--out",
            str(extractor),
        ),  # fmt: skip
    }
    rows = {}
    for name, extra in runs.items():
        run = out / "runs" / name
        t_train = _once(run / "summary.json", "train", str(PIPELINE), "--out", str(run), *COMMON, *extra,
                        f"--train.epochs={args.epochs}")  # fmt: skip
        shards = out / "shards" / name
        t_gen = _once(shards / "manifest.json", "generate", "--run", str(run), "--out", str(shards),
                      "--n", str(args.n), "--kind", "hard", "--seed", "0")  # fmt: skip
        report = out / "audit" / name
        audit_args = ["--split", "train", "--classifier", str(extractor), "--max-real", "10000"]
        t_audit = _once(report / "report.json", "audit", str(shards), "--real", "fashion-mnist", *audit_args,
                        "--out", str(report))  # fmt: skip
        ev = out / "runs" / f"{name}.eval.json"
        if not ev.exists():
            proc = subprocess.run([sys.executable, "-m", "synthkit.cli", "eval", "--run", str(run), "--json"],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            ev.write_text(proc.stdout)
        times[name] = {"train": t_train, "generate": t_gen, "audit": t_audit}
        audit = json.loads((report / "report.json").read_text())
        evaluation = json.loads(ev.read_text())
        summary = json.loads((run / "summary.json").read_text())
        rows[name] = {
            "metrics": {
                k: v["value"] for k, v in audit["metrics"].items() if isinstance(v["value"], (int, float))
            },
            "extractor": audit["extractor"]["id"],
            "knn": evaluation["knn_accuracy"],
            "linear": evaluation["linear_accuracy"],
            "unet_hash": summary["hashes"]["unet_ema"],
        }
    keys = ["fid", "kid_mean", "precision", "recall", "density", "coverage", "hardness_recorded_mean"]
    lines = [
        "# A pretrained diffusion producer vs a from-scratch run (Fashion-MNIST, 10,000 images, 28 px)",
        "",
        f"`python eval/pretrained_producer.py --out {out} --unet-steps {args.unet_steps} "
        f"--epochs {args.epochs} --n {args.n}` (OMP_NUM_THREADS=1, this 2-core CPU, shared with other jobs).",
        "",
        f"Audit of {args.n} guided hard samples per run against 10,000 real training images, feature space "
        f"`{rows['scratch']['extractor']}` (a classifier trained on Fashion-MNIST).",
        "",
        "| run | UNet trained in the run | " + " | ".join(keys) + " | kNN | linear | train s | total s |",
        "|---|---|" + "---|" * (len(keys) + 4),
    ]
    for name, row in rows.items():
        unet_here = "no (pretrained)" if name == "pretrained" else f"{args.unet_steps} steps"
        total = sum(times[name].values()) + (times["pretrain"]["train"] if name == "pretrained" else 0.0)
        cells = [f"{row['metrics'].get(k, float('nan')):.4g}" for k in keys]
        lines.append(
            f"| {name} | {unet_here} | " + " | ".join(cells) + f" | {row['knn']:.4f} | {row['linear']:.4f} | "
            f"{times[name]['train']:.0f} | {total:.0f} |"
        )
    lines += [
        "",
        f"The pretrained model: a run of one epoch whose stage 1 trained the UNet for {args.unet_steps} "
        f"steps (batch 64), {times['pretrain']['train']:.0f} s. 'total s' of the pretrained row includes it; "
        "a second run reusing the same model would not pay it again.",
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "seconds": times}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
