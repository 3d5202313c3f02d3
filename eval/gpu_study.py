"""A prepared GPU study: real-only vs the method with a ResNet-18 on full Fashion-MNIST at 32 px, in bf16.

Sized for one H200-class GPU in under 9 minutes including start-up (the budget of a lent device machine):

1. step throughput: images/s of a plain SimCLR step and of a joint HSG step (``bench_joint_step.measure``);
2. ``real-only``: SimCLR on the 60,000 training images (``--epochs``, batch 512, bf16);
3. the method (``--method``, default HSG+HPG): a cGAN pre-trained on realism alone for ``--gan-pretrain``
   steps (``generator.pretrain_steps``; the setting that moved the CPU table most, see
   ``eval/results/method_table/README.md``), then HSG+HPG jointly with the encoder for the same epochs;
4. both scored with the weighted kNN and the linear probe on frozen features (fit on the 60,000 training
   images, scored on the 10,000 test images) on the GPU.

Everything prints as it goes and ends with one JSON line, so a cut-short session still shows what ran.
``--quick`` is the CPU smoke run of the same path (a 128-image subset, one epoch, batch 32, fp32, 100 test
images): it is what CI can afford (``tests/test_gpu_study.py`` runs it on tiny idx files), and proves the
script runs end to end. On a device machine the Fashion-MNIST idx files must come with the repository
(``--data-root``): nothing outside it is reachable there.

    python eval/gpu_study.py [--quick] [--out DIR] [--epochs 12] [--gan-pretrain 2000] [--method hsg+hpg]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

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
METHODS = {
    "hsg": (),
    "hpg": ("--hsg.enabled=false", "--hpg.enabled=true"),
    "hsg+hpg": ("--hpg.enabled=true",),
}


def _base(args: argparse.Namespace) -> list[str]:
    common = [
        f"--data.root={args.data_root}",
        "--data.subset=null" if not args.quick else "--data.subset=128",
        "--data.size=32",
        "--encoder.backbone=resnet18",
        "--encoder.proj_hidden=512",
        "--views.crop_scale=[0.2, 1.0]",
        f"--train.epochs={1 if args.quick else args.epochs}",
        f"--train.batch_size={32 if args.quick else 512}",
        f"--train.mixed_precision={repr('no') if args.quick else 'bf16'}",
        "--train.knn_every=0",
        "--train.checkpoint_every=1000",
        "--train.log_every=20",
        "--hsg.warmup_epochs=0" if args.quick else f"--hsg.warmup_epochs={max(1, args.epochs // 6)}",
        "--hpg.warmup_epochs=0" if args.quick else f"--hpg.warmup_epochs={max(1, args.epochs // 6)}",
        "--hsg.ramp_epochs=1" if args.quick else f"--hsg.ramp_epochs={max(1, args.epochs // 6)}",
        "--generator.g_channels=32",
        "--generator.d_channels=32",
    ]
    return common


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the CPU smoke run (128 images, 1 epoch)")
    ap.add_argument("--out", type=Path, help="where the runs go (default: a temporary directory)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--gan-pretrain", type=int, default=2000, help="cGAN pre-training steps (0: none)")
    ap.add_argument("--method", choices=sorted(METHODS), default="hsg+hpg")
    ap.add_argument(
        "--data-root",
        default="/usr/share/datasets/fashion-mnist",
        help="the Fashion-MNIST idx files (a device machine has none: carry a copy inside the repository)",
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    gpu = torch.cuda.is_available()
    if not gpu and not args.quick:
        print(
            "no CUDA device: run with --quick on the CPU (the full study is sized for one H200)",
            file=sys.stderr,
        )
        return 2
    info = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "quick": args.quick,
        "epochs": 1 if args.quick else args.epochs,
    }
    print(json.dumps({"start": info}), flush=True)
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_study_"))
    base = _base(args)
    result: dict = {"info": info, "runs": {}}

    # 1. Step throughput (a plain and a joint step on the same real batch) ---
    cfg = load_pipeline(PIPELINE, base)
    real = load_source(cfg.data, "train")
    batch = cfg.train.batch_size
    steps = measure(cfg, real.images, batch, repeats=2 if args.quick else 20, warmup=1 if args.quick else 5)
    result["steps"] = steps
    where = f"{steps['device']}, {steps['mixed_precision']}"
    print(
        f"[{time.perf_counter() - t0:6.0f}s] step throughput ({where}): plain {steps['plain_img_per_s']:.0f} "
        f"img/s, joint HSG {steps['joint_img_per_s']:.0f} img/s (ratio {steps['ratio']:.2f}x)",
        flush=True,
    )

    # 2-3. The runs ---
    runs = {"real-only": ["--hsg.enabled=false"], args.method: list(METHODS[args.method])}
    pre = out / "gan-pretrain"
    if args.gan_pretrain:
        t = time.perf_counter()
        steps_pre = 20 if args.quick else args.gan_pretrain
        cfg_pre = load_pipeline(
            PIPELINE, [*base, "--train.epochs=0", f"--generator.pretrain_steps={steps_pre}"]
        )
        train(cfg_pre, pre, progress=False)
        result["gan_pretrain_s"] = round(time.perf_counter() - t, 1)
        runs[args.method].append(f"--generator.init_run={pre}")
        print(f"[{time.perf_counter() - t0:6.0f}s] cGAN pre-trained for {steps_pre} steps", flush=True)
    for name, extra in runs.items():
        t = time.perf_counter()
        run = out / name.replace("+", "_")
        res = train(load_pipeline(PIPELINE, [*base, *extra]), run, progress=False)
        train_s = time.perf_counter() - t
        ev = evaluate(str(run), full_train=not args.quick, test_limit=100 if args.quick else None)
        entry = {
            "train_s": round(train_s, 1),
            "steps": res.summary["steps"],
            "knn": ev["knn_accuracy"],
            "linear": ev["linear_accuracy"],
            "eval_s": ev["seconds"],
            "throughput": res.summary.get("throughput"),
        }
        result["runs"][name] = entry
        print(
            f"[{time.perf_counter() - t0:6.0f}s] {name}: {res.summary['steps']} steps in {train_s:.0f} s; "
            f"kNN {100 * ev['knn_accuracy']:.2f}, linear {100 * ev['linear_accuracy']:.2f} "
            f"(test, {ev['test_images']} images)",
            flush=True,
        )
    r, m = result["runs"]["real-only"], result["runs"][args.method]
    result["difference"] = {"linear": m["linear"] - r["linear"], "knn": m["knn"] - r["knn"]}
    result["total_s"] = round(time.perf_counter() - t0, 1)
    print(
        f"{args.method} - real-only: linear {100 * result['difference']['linear']:+.2f}, kNN "
        f"{100 * result['difference']['knn']:+.2f} points; total {result['total_s']:.0f} s"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
