"""A prepared GPU study: real-only vs the method with a ResNet-18 on full Fashion-MNIST at 32 px, in bf16.

Sized for one H100/H200-class GPU within ``--budget`` seconds (default 540, nine minutes: a lent device
machine's session leaves time for start-up and a rerun). Phases, each printed with its time as it ends:

1. ``steps``: images/s of a plain SimCLR step and of a joint HSG step (``bench_joint_step.measure``) in bf16,
   with ``torch.cuda.set_sync_debug_mode("warn")``: every host sync warns, and the warnings are counted, per
   plain and per joint step (on a CPU there is nothing to count, and the output says so; a CPU also
   measures fp32, as its emulated bf16 takes ~35x longer);
2. ``gan-pretrain``: a cGAN pre-trained on realism alone for ``--gan-pretrain`` steps
   (``generator.pretrain_steps``, the setting that moved the CPU table most, see
   ``eval/results/method_table/README.md``);
3. ``real-only``: SimCLR on the 60,000 training images (batch 512, bf16), then its kNN and linear probe on
   frozen features (fit on the 60,000 training images, scored on the 10,000 test images);
4. the method (``--method``, default HSG+HPG) from the pre-trained cGAN, jointly with the encoder for the
   same epochs, scored the same way.

The budget is checked as it goes: after phases 1-2 the epochs are trimmed (from ``--epochs``) to what the
measured step times say both runs and their evaluations fit in, with a margin; if the real-only run took
longer than estimated, the method's epochs are trimmed again (and the result says the two runs differ). A
phase that cannot fit is skipped, and the study still ends with its one JSON line, so a cut-short session
shows what ran.

``--steps-only``: phase 1 alone (about a minute on a GPU). ``--quick``: the CPU smoke run of the same path
(a 128-image subset, one epoch, batch 32, fp32 runs, 100 test images); CI runs it on tiny idx files
(``tests/test_gpu_study.py``).

The data come from inside the repository, because a device machine reaches nothing outside it: the
Fashion-MNIST idx files (``.gz`` or not) in ``data/fashion-mnist/`` (git-ignored; pass it to the device
machine as a carried path). One line puts them there from where Debian's ``dataset-fashion-mnist`` has
them (or wherever you keep them)::

    mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*-ubyte.gz data/fashion-mnist/

    python eval/gpu_study.py [--steps-only] [--quick] [--budget 540] [--out DIR] [--epochs 12]
                             [--gan-pretrain 2000] [--method hsg+hpg] [--data-root data/fashion-mnist]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "eval"))
sys.path.insert(0, str(ROOT))

from bench_joint_step import measure  # noqa: E402

from synthkit.config import load_pipeline  # noqa: E402
from synthkit.data.sources import load_source  # noqa: E402
from synthkit.evaluate import evaluate  # noqa: E402
from synthkit.training.loop import train  # noqa: E402

PIPELINE = ROOT / "pipelines" / "fashion-mnist-method.yaml"
DATA_ROOT = ROOT / "data" / "fashion-mnist"
COPY_HINT = (
    "mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*-ubyte.gz data/fashion-mnist/"
)
IDX_FILES = tuple(
    f"{split}-{what}" for split in ("train", "t10k") for what in ("images-idx3-ubyte", "labels-idx1-ubyte")
)
METHODS = {
    "hsg": (),
    "hpg": ("--hsg.enabled=false", "--hpg.enabled=true"),
    "hsg+hpg": ("--hpg.enabled=true",),
}
TRAIN_IMAGES = 60_000
# an epoch of a run against the step time measured in phase 1: the loop's own work (data, logs, the
# conditions' k-means, checkpoints) on top of the steps; the method's HPG pairs and D steps on top of the
# joint HSG step (from the CPU quick run: 1.0x plain for real-only, 1.4x joint for HSG+HPG), with margin
EPOCH_OVERHEAD = {"real-only": 1.25, "method": 1.8}
MARGIN_S = 30.0  # left unplanned at the end of the budget


def _base(args: argparse.Namespace, epochs: int) -> list[str]:
    return [
        f"--data.root={args.data_root}",
        "--data.subset=null" if not args.quick else "--data.subset=128",
        "--data.size=32",
        "--encoder.backbone=resnet18",
        "--encoder.proj_hidden=512",
        "--views.crop_scale=[0.2, 1.0]",
        f"--train.epochs={epochs}",
        f"--train.batch_size={32 if args.quick else 512}",
        f"--train.mixed_precision={repr('no') if args.quick else 'bf16'}",
        "--train.knn_every=0",
        "--train.checkpoint_every=1000",
        "--train.log_every=20",
        "--hsg.warmup_epochs=0" if args.quick else f"--hsg.warmup_epochs={max(1, epochs // 6)}",
        "--hpg.warmup_epochs=0" if args.quick else f"--hpg.warmup_epochs={max(1, epochs // 6)}",
        "--hsg.ramp_epochs=1" if args.quick else f"--hsg.ramp_epochs={max(1, epochs // 6)}",
        "--generator.g_channels=32",
        "--generator.d_channels=32",
    ]


def missing_data(root: Path) -> str | None:
    """None when ``root`` holds the four idx files (``.gz`` or not), else a one-line reason with the fix."""
    absent = [n for n in IDX_FILES if not (root / n).is_file() and not (root / f"{n}.gz").is_file()]
    if not absent:
        return None
    return (
        f"the Fashion-MNIST idx files are not in {root} (missing {', '.join(absent)}); from the repository "
        f"root: {COPY_HINT} (or --data-root DIR)"
    )


class SyncCounter:
    """Counts the warnings ``torch.cuda.set_sync_debug_mode("warn")`` raises (one per host sync), by the
    kind of step that raised them: a sync inside ``measure``'s ``run_joint`` is a joint step's, any other a
    plain step's. Nothing to count without CUDA (``counting`` False)."""

    def __init__(self) -> None:
        self.counting = torch.cuda.is_available()
        self.counts = {"plain": 0, "joint": 0}

    @contextmanager
    def active(self) -> Iterator[None]:
        if not self.counting:
            yield
            return
        shown = warnings.showwarning

        def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None):
            if "synchroniz" not in str(message):
                return shown(message, category, filename, lineno, file, line)
            names = {frame.name for frame in traceback.extract_stack()}
            self.counts["joint" if "run_joint" in names else "plain"] += 1
            return None

        with warnings.catch_warnings():
            warnings.filterwarnings("always", message=".*synchroniz.*")
            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")


class Study:
    """The phases' clock and budget, and the result printed at the end."""

    def __init__(self, budget: float) -> None:
        self.t0 = time.perf_counter()
        self.budget = budget
        self.result: dict[str, Any] = {"phases": {}, "skipped": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.0f}s] {text}", flush=True)

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        self.say(f"{name} ...")
        t = time.perf_counter()
        out = fn()
        took = time.perf_counter() - t
        self.result["phases"][name] = round(took, 1)
        self.say(f"{name} done in {took:.1f} s ({self.left():.0f} s of the budget left)")
        return out

    def skip(self, name: str, why: str) -> None:
        self.result["skipped"].append({"phase": name, "why": why})
        self.say(f"{name} skipped: {why}")

    def finish(self) -> int:
        self.result["total_s"] = round(self.elapsed(), 1)
        self.result["within_budget"] = self.elapsed() <= self.budget
        print(json.dumps(self.result), flush=True)
        return 0


def steps_phase(study: Study, args: argparse.Namespace) -> dict:
    """Plain and joint step throughput in bf16 (fp32 on a CPU), host syncs counted on CUDA."""
    batch = 32 if args.quick else 512
    # bf16 on a CPU without bf16 units is emulated: a ResNet-18 step at 32 px took 35x longer than fp32
    # on the 2-core machine this was written on, so a CPU measures fp32 (and says so)
    precision = "bf16" if torch.cuda.is_available() else "no"
    cfg = load_pipeline(
        PIPELINE, [*_base(args, 1), f"--train.batch_size={batch}", f"--train.mixed_precision={precision!r}"]
    )
    real = load_source(cfg.data, "train")
    repeats, warmup = (2, 1) if args.quick else (20, 5)
    counter = SyncCounter()
    with counter.active():
        steps = measure(cfg, real.images, batch, repeats=repeats, warmup=warmup)
    n = repeats + warmup  # measure runs n plain, n joint and n plain steps on an enlarged batch
    if counter.counting:
        sync = {
            "counted": True,
            "plain_per_step": round(counter.counts["plain"] / (2 * n), 2),
            "joint_per_step": round(counter.counts["joint"] / n, 2),
            "total": counter.counts,
            "steps": {"plain": 2 * n, "joint": n},
            "note": "torch.cuda.set_sync_debug_mode('warn') warnings, warm-up steps included",
        }
    else:
        sync = {"counted": False, "note": "sync counting needs CUDA (torch.cuda.set_sync_debug_mode)"}
    steps["syncs"] = sync
    if precision != "bf16":
        steps["precision_note"] = (
            "fp32: bf16 is measured on CUDA only (emulated bf16 on a CPU is ~35x slower)"
        )
    where = f"{steps['device']}, {steps['mixed_precision']}"
    study.say(
        f"step throughput ({where}): plain {steps['plain_img_per_s']:.0f} img/s, joint HSG "
        f"{steps['joint_img_per_s']:.0f} img/s (ratio {steps['ratio']:.2f}x)"
    )
    if precision != "bf16":
        study.say(steps["precision_note"])
    if sync["counted"]:
        study.say(f"host syncs per step: plain {sync['plain_per_step']}, joint {sync['joint_per_step']}")
    else:
        study.say(f"host syncs: not counted ({sync['note']})")
    return steps


def epoch_estimates(steps: dict) -> dict[str, float]:
    """Seconds an epoch of each run should take, from phase 1's step times."""
    per_epoch = math.ceil(TRAIN_IMAGES / 512)
    return {
        "real-only": per_epoch * steps["plain_step_s"] * EPOCH_OVERHEAD["real-only"],
        "method": per_epoch * steps["joint_step_s"] * EPOCH_OVERHEAD["method"],
    }


def plan_epochs(study: Study, args: argparse.Namespace, est: dict[str, float], eval_s: float) -> int:
    """The most epochs (at most ``--epochs``) that both runs and their evaluations fit in what is left."""
    if args.quick:
        return 1
    epoch_s = est["real-only"] + est["method"]
    room = study.left() - MARGIN_S - 2 * eval_s
    epochs = max(0, min(args.epochs, int(room // epoch_s)))
    study.result["plan"] = {
        "epoch_s_estimate": {k: round(v, 1) for k, v in est.items()},
        "eval_s_estimate": round(eval_s, 1),
        "epochs_asked": args.epochs,
        "epochs": epochs,
    }
    study.say(
        f"plan: {epochs} of {args.epochs} epochs fit (an epoch of both runs ~{epoch_s:.0f} s, "
        f"evaluations ~{eval_s:.0f} s each)"
    )
    return epochs


def run_phase(study: Study, args: argparse.Namespace, name: str, extra: list[str], epochs: int) -> dict:
    t = time.perf_counter()
    run = args.out / name.replace("+", "_")
    res = train(load_pipeline(PIPELINE, [*_base(args, epochs), *extra]), run, progress=False)
    train_s = time.perf_counter() - t
    ev = evaluate(
        str(run),
        full_train=not args.quick,
        test_limit=100 if args.quick else None,
        knn_k=12 if args.quick else None,  # the quick subset has 12 images per class
    )
    entry = {
        "epochs": epochs,
        "train_s": round(train_s, 1),
        "steps": res.summary["steps"],
        "knn": ev["knn_accuracy"],
        "linear": ev["linear_accuracy"],
        "eval_s": ev["seconds"],
        "throughput": res.summary.get("throughput"),
    }
    study.say(
        f"{name}: {res.summary['steps']} steps in {train_s:.0f} s; kNN {100 * ev['knn_accuracy']:.2f}, "
        f"linear {100 * ev['linear_accuracy']:.2f} (test, {ev['test_images']} images)"
    )
    return entry


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the CPU smoke run (128 images, 1 epoch)")
    ap.add_argument("--steps-only", action="store_true", help="only phase 1: step throughput and host syncs")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds the whole study may take (540)")
    ap.add_argument("--out", type=Path, help="where the runs go (default: a temporary directory)")
    ap.add_argument("--epochs", type=int, default=12, help="epochs per run at most (trimmed to the budget)")
    ap.add_argument("--gan-pretrain", type=int, default=2000, help="cGAN pre-training steps (0: none)")
    ap.add_argument("--method", choices=sorted(METHODS), default="hsg+hpg")
    ap.add_argument(
        "--data-root",
        type=Path,
        default=DATA_ROOT,
        help="the Fashion-MNIST idx files (default: data/fashion-mnist in the repository, git-ignored)",
    )
    args = ap.parse_args()
    study = Study(args.budget)
    gpu = torch.cuda.is_available()
    if not gpu and not (args.quick or args.steps_only):
        print("gpu_study: no CUDA device: use --quick or --steps-only on a CPU", file=sys.stderr)
        return 2
    if not gpu and not args.quick:  # --steps-only on a CPU: the quick sizes (a GPU's batch takes minutes)
        print("gpu_study: no CUDA device: --steps-only with the --quick sizes", file=sys.stderr)
        args.quick = True
    problem = missing_data(args.data_root)
    if problem is not None:
        print(f"gpu_study: {problem}", file=sys.stderr)
        return 2
    info = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "quick": args.quick,
        "steps_only": args.steps_only,
        "budget_s": args.budget,
    }
    study.result["info"] = info
    print(json.dumps({"start": info}), flush=True)

    # 1. Step throughput and host syncs ---
    steps = study.phase("steps", lambda: steps_phase(study, args))
    study.result["steps"] = steps
    if args.steps_only:
        return study.finish()

    # 2. The cGAN's pre-training ---
    args.out = args.out or Path(tempfile.mkdtemp(prefix="gpu_study_"))
    runs = {"real-only": ["--hsg.enabled=false"], args.method: list(METHODS[args.method])}
    if args.gan_pretrain:
        pre = args.out / "gan-pretrain"
        n_pre = 20 if args.quick else args.gan_pretrain
        # G and D steps cost less than a joint step; a third of the budget at most, or fewer steps
        est = n_pre * steps["joint_step_s"] * 0.5
        if not args.quick and est > study.left() / 3:
            n_pre = max(100, int(study.left() / 3 / (steps["joint_step_s"] * 0.5)))
            study.say(f"gan-pretrain trimmed to {n_pre} steps to fit the budget")
        cfg_pre = load_pipeline(
            PIPELINE, [*_base(args, 0), "--train.epochs=0", f"--generator.pretrain_steps={n_pre}"]
        )
        study.phase("gan-pretrain", lambda: train(cfg_pre, pre, progress=False))
        study.result["gan_pretrain_steps"] = n_pre
        runs[args.method].append(f"--generator.init_run={pre}")

    # 3-4. The runs, epochs planned from the measured steps ---
    # evaluation: features of 70,000 images (forward only, ~1/3 of a plain step per batch) plus the probes
    eval_s = 60.0 + math.ceil(70_000 / 512) * steps["plain_step_s"] / 3
    est = epoch_estimates(steps)
    epochs = plan_epochs(study, args, est, eval_s)
    study.result["runs"] = {}
    if epochs < 1:
        for name in runs:
            study.skip(name, "not even one epoch of both runs fits the budget")
        return study.finish()
    entry = study.phase("real-only", lambda: run_phase(study, args, "real-only", runs["real-only"], epochs))
    study.result["runs"]["real-only"] = entry
    method_epochs = epochs
    if not args.quick:  # the real-only run's own pace says how far off the estimates are
        slower = max(1.0, entry["train_s"] / epochs / est["real-only"])
        method_epoch_s = est["method"] * slower
        method_epochs = min(epochs, int((study.left() - MARGIN_S - eval_s) // method_epoch_s))
    if method_epochs < 1:
        study.skip(args.method, "the real-only run took the time the method's run needed")
        return study.finish()
    if method_epochs < epochs:
        study.result["epochs_differ"] = {"real-only": epochs, args.method: method_epochs}
        study.say(f"{args.method} trimmed to {method_epochs} epochs: the runs differ, compare with care")
    study.result["runs"][args.method] = study.phase(
        args.method, lambda: run_phase(study, args, args.method, runs[args.method], method_epochs)
    )
    r, m = study.result["runs"]["real-only"], study.result["runs"][args.method]
    study.result["difference"] = {"linear": m["linear"] - r["linear"], "knn": m["knn"] - r["knn"]}
    study.say(
        f"{args.method} - real-only: linear {100 * study.result['difference']['linear']:+.2f}, kNN "
        f"{100 * study.result['difference']['knn']:+.2f} points"
    )
    return study.finish()


if __name__ == "__main__":
    raise SystemExit(main())
