"""The method-versus-baselines table on real Fashion-MNIST (docs/method.md, "Baselines every comparison
needs").

    python eval/method_table.py [--out eval/results/method_table] [--seeds 0 1 2] [--quick]
                                [--objectives simclr moco] [--rows real-only naive hsg hpg hsg+hpg]
                                [--pipeline pipelines/fashion-mnist-method.yaml] [--set section.key=value ...]

Rows, each at the same real data, epochs and encoder, for every objective and seed:
- ``real-only``: CL on the real subset alone;
- ``naive``: a cGAN trained once on the real data with realism alone (``hsg.lambda_hard=0``, its warm-up
  spanning the whole run, so neither it nor that run's encoder ever sees the other's signal), then frozen;
  its samples are mixed into CL at ``hsg.synthetic_ratio``;
- ``hsg``, ``hpg``, ``hsg+hpg``: the method's producers, trained jointly with the encoder;
- data efficiency (SimCLR): ``hsg+hpg`` and ``real-only`` on half of the real subset (``half``), to set
  against ``real-only`` on all of it.

Every encoder is scored with a weighted kNN (k=200, t=0.1) and a linear probe on frozen backbone features,
both fitted on the full real subset with its labels (the same labeled set for every row, so rows differ only
in their representation) and scored on (a) a validation split of 5,000 other training images, which is
what settings may be chosen on, and (b) the 10,000 test images, which are reported and never tuned on.

Writes ``table.md``, ``table.json`` (mean, standard deviation and per-seed values, wall time per run),
``table.png`` (linear accuracy per row) and ``similarity.png`` (HPG's pair similarity against its target
s*(t) over training steps). Runs already finished under ``OUT/runs`` are reused, so an interrupted table
resumes. ``--quick`` is a smoke run: 1 seed, 1,000 images, 2 epochs, small nets.

Default budget (from per-run times measured on this project's idle 2-core CPU; see eval/README.md): 3 seeds
x 5 rows x 2 objectives + 3 naive generators + 6 half-data runs, about 75 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthkit.config import PipelineConfig, load_pipeline  # noqa: E402
from synthkit.data.sources import ImageSet, load_source, subset_indices  # noqa: E402
from synthkit.data.views import to_float  # noqa: E402
from synthkit.encoders.model import Encoder, extract_features  # noqa: E402
from synthkit.run_files.final import load_final  # noqa: E402

sys.path.insert(0, str(ROOT / "eval"))
from study_common import probe_scores, train_once  # noqa: E402
from study_common import summarise as _summarise  # noqa: E402

ROWS: dict[str, tuple[str, ...]] = {
    "real-only": ("--hsg.enabled=false",),
    "naive": ("--hsg.enabled=false",),  # + generator.kind=naive and generator.run, set per seed
    "hsg": (),
    "hpg": ("--hsg.enabled=false", "--hpg.enabled=true"),
    "hsg+hpg": ("--hpg.enabled=true",),
}
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "simclr": (),
    # MoCo v2's temperature (Chen et al., 2020); queue = 4096 keys
    "moco": ("--objective.name=moco", "--objective.temperature=0.2"),
}
HALF_ROWS = ("real-only", "hsg+hpg")
# --producer diffusion: the shared model (fashion-mnist-diffusion.yaml's UNet, unconditional) and the rows'
# sampling settings (a pool of 512 every 2 epochs, 20 DDIM steps, guidance 0.05 x the hsg ramp, t_split
# 0.2 -> 0.6), with the HSG/HPG batch shares of the cGAN rows
DIFFUSION_MODEL = (
    "--generator.kind=diffusion",
    "--generator.block_out_channels=[16, 32, 32]",
    "--generator.norm_num_groups=8",
    "--generator.batch_size=64",
    "--generator.lr=1e-3",
    "--generator.ema_decay=0.995",
    "--conditions.mode=none",
)
DIFFUSION_ROWS = ("--generator.kind=diffusion", "--conditions.mode=none")
KEYS = ("test_linear", "test_knn", "val_linear", "val_knn")
VAL_SIZE = 5000
QUICK = (
    "--data.subset=1000",
    "--train.epochs=2",
    "--train.batch_size=128",
    "--encoder.width=8",
    "--generator.g_channels=8",
    "--generator.d_channels=8",
    "--hsg.warmup_epochs=1",
    "--hsg.ramp_epochs=1",
    "--hpg.warmup_epochs=1",
    "--conditions.refresh_every=1",
    "--eval.probe_epochs=20",
)
QUICK_MOCO = ("--objective.queue_size=512",)


@dataclasses.dataclass
class Splits:
    fit: ImageSet  # the real subset, with labels
    val: ImageSet  # held-out training images
    test: ImageSet


def _splits(cfg: PipelineConfig, quick: bool) -> Splits:
    full_cfg = dataclasses.replace(cfg.data, subset=None)
    full = load_source(full_cfg, "train")
    keep = subset_indices(len(full), cfg.data)
    assert keep is not None, "the method table needs data.subset"
    rest = np.setdiff1d(np.arange(len(full)), keep)
    rng = np.random.default_rng(1234)
    val_idx = np.sort(rng.choice(rest, size=min(VAL_SIZE if not quick else 1000, len(rest)), replace=False))
    test = load_source(full_cfg, "test")
    if quick:
        test = ImageSet(test.images[:2000], test.labels[:2000], test.name, test.classes)
    k, v = torch.from_numpy(keep), torch.from_numpy(val_idx)
    return Splits(
        ImageSet(full.images[k], full.labels[k], full.name, full.classes),
        ImageSet(full.images[v], full.labels[v], full.name, full.classes),
        test,
    )


def _score_features(featurize: Any, splits: Splits, cfg: PipelineConfig) -> dict[str, float]:
    """kNN and linear-probe accuracy on val and test of features fitted on the real subset."""
    f_fit = featurize(splits.fit.images)
    out: dict[str, float] = {}
    for name, split in (("val", splits.val), ("test", splits.test)):
        scores = probe_scores(f_fit, splits.fit.labels, featurize(split.images), split.labels, cfg.eval)
        out[f"{name}_knn"], out[f"{name}_linear"] = scores["knn"], scores["linear"]
    return out


def _score(run: Path, splits: Splits, cfg: PipelineConfig) -> dict[str, float]:
    enc = load_final(run).encoder
    return _score_features(lambda x: extract_features(enc, x), splits, cfg)


def _references(out: Path, splits: Splits, cfg: PipelineConfig, seeds: list[int]) -> dict[str, Any]:
    """What needs no training, scored the same way: raw pixels, and the encoder at its random
    initialisation (per seed). The head-room a table's rows compete for lies above these."""
    path = out / "references.json"
    refs = json.loads(path.read_text()) if path.exists() else {}
    if "pixels" not in refs:
        refs["pixels"] = _score_features(lambda x: to_float(x).flatten(1), splits, cfg)
    for seed in seeds:
        key = f"random-init-s{seed}"
        if key not in refs:
            torch.manual_seed(seed)  # the loop's set_seed(train.seed) before building the encoder
            enc = Encoder(cfg.encoder, splits.fit.images.shape[1])
            refs[key] = _score_features(lambda x, enc=enc: extract_features(enc, x), splits, cfg)
    path.write_text(json.dumps(refs, indent=2))
    per_seed = [refs[f"random-init-s{s}"] for s in seeds]
    return {
        "pixels": refs["pixels"],
        "random-init": {k: _summarise([r[k] for r in per_seed]) for k in per_seed[0]},
    }


def _paired(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Paired differences, in percentage points: per seed, a row minus its reference at the same seed and
    objective (same real data unless stated), then mean +- std over the seeds both have. References: every
    row minus real-only; the method rows minus naive; a half-data row minus real-only on all the data too
    (data efficiency: does half the real data plus the method match all of it?)."""
    by = {
        (r["row"], r["objective"], r["half"]): {s["seed"]: s for s in r["per_seed"] if "seed" in s}
        for r in table
    }
    out = []
    for (row, obj, half), seeds in by.items():
        refs = [] if row == "real-only" else [("real-only", half)]
        if row not in ("real-only", "naive"):
            refs.append(("naive", half))
        if half:
            refs.append(("real-only", False))
        for ref_row, ref_half in refs:
            ref = by.get((ref_row, obj, ref_half), {})
            common = sorted(set(seeds) & set(ref))
            if not common:
                continue
            entry: dict[str, Any] = {
                "row": row, "objective": obj, "half": half,
                "minus": ref_row, "minus_half": ref_half, "seeds": common,
            }  # fmt: skip
            for key in KEYS:
                diffs = [100 * (seeds[s][key] - ref[s][key]) for s in common]
                entry[key] = {**_summarise(diffs), "per_seed": diffs}
            out.append(entry)
    return out


def _plots(out: Path, table: list[dict[str, Any]], pair_run: Path | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(table) + 1.5))
    labels = [f"{r['row']} / {r['objective']}" + (" (half real)" if r["half"] else "") for r in table]
    means = [100 * r["test_linear"]["mean"] for r in table]
    stds = [100 * r["test_linear"]["std"] for r in table]
    ax.barh(range(len(table)), means, xerr=stds, color="#4c72b0", capsize=3)
    ax.set_yticks(range(len(table)), labels)
    ax.invert_yaxis()
    lo = min(means) - 3 * max(max(stds), 0.5)
    ax.set_xlim(max(0, lo), min(100, max(means) + 3 * max(max(stds), 0.5)))
    ax.set_xlabel("linear-probe test accuracy (%), mean +- std over seeds")
    ax.set_title("Fashion-MNIST: method vs baselines")
    fig.tight_layout()
    fig.savefig(out / "table.png", dpi=120)
    plt.close(fig)
    if pair_run is None:
        return
    recs = [json.loads(line) for line in (pair_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "pair_similarity" in r]
    if not steps:  # the diffusion producer's pairs: a similarity per pool, not per step (see table.json)
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [r["step"] for r in steps]
    ax.plot(x, [r["pair_similarity"] for r in steps], label="pair similarity s = cos(h(x_a), h(x_b))")
    ax.plot(x, [r["pair_target"] for r in steps], "--", label="target s*(t)")
    if "real_positive_similarity" in steps[0]:
        ax.plot(x, [r["real_positive_similarity"] for r in steps], ":", label="real augmented positives")
    ax.set_xlabel("training step")
    ax.set_ylabel("cosine similarity (backbone)")
    ax.set_title(f"HPG pair similarity vs target: {pair_run.name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "similarity.png", dpi=120)
    plt.close(fig)


def _markdown(table: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Fashion-MNIST method table: {meta['command']}",
        "",
        f"Real subset {meta['subset']} images (half: {meta['subset'] // 2}), {meta['epochs']} epochs, "
        f"seeds {meta['seeds']}; accuracies in %, mean +- std over seeds; probes fitted on the full real "
        f"subset; val = {meta['val_size']} held-out training images, test = {meta['test_size']} test images.",
        "",
        "| row | objective | real data | seeds | test linear | test kNN | val linear | val kNN | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:

        def f(key: str, r: dict[str, Any] = r) -> str:
            return f"{100 * r[key]['mean']:.2f} +- {100 * r[key]['std']:.2f}"

        lines.append(
            f"| {r['row']} | {r['objective']} | {'half' if r['half'] else 'all'} | {r['n_seeds']} | "
            f"{f('test_linear')} | "
            f"{f('test_knn')} | {f('val_linear')} | {f('val_knn')} | {r['train_seconds']['mean']:.0f} |"
        )
    paired = meta.get("paired")
    if paired:

        def name(row: str, half: bool) -> str:
            return f"{row} ({'half' if half else 'all'})"

        lines += [
            "",
            "Paired differences (per seed, then mean +- std over seeds), percentage points; per-seed values "
            "in table.json:",
            "",
            "| difference | objective | seeds | val linear | test linear | val kNN | test kNN |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in paired:
            cells = " | ".join(
                f"{p[k]['mean']:+.2f} +- {p[k]['std']:.2f}"
                for k in ("val_linear", "test_linear", "val_knn", "test_knn")
            )
            lines.append(
                f"| {name(p['row'], p['half'])} - {name(p['minus'], p['minus_half'])} | {p['objective']} | "
                f"{len(p['seeds'])} | {cells} |"
            )
    refs = meta.get("references")
    if refs:
        pix, rnd = refs["pixels"], refs["random-init"]
        lines += [
            "",
            "Without any training, scored the same way (the rows compete for the head-room above these):",
            "",
            "| features | test linear | test kNN | val linear | val kNN |",
            "|---|---|---|---|---|",
            "| raw pixels | " + " | ".join(f"{100 * pix[k]:.2f}" for k in KEYS) + " |",
            "| encoder at its random initialisation (per seed) | "
            + " | ".join(f"{100 * rnd[k]['mean']:.2f} +- {100 * rnd[k]['std']:.2f}" for k in KEYS)
            + " |",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "method_table")
    ap.add_argument("--pipeline", type=Path, default=ROOT / "pipelines" / "fashion-mnist-method.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--no-half", action="store_true", help="skip the data-efficiency rows")
    ap.add_argument(
        "--half-only",
        action="store_true",
        help="only the data-efficiency rows (to run them in a second process beside the all-data rows)",
    )
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        help="extra overrides for every run: section.key=value (with --producer diffusion, generator.* "
        "ones apply to the HSG/HPG rows' sampling only: the shared model and the naive row keep theirs)",
    )
    ap.add_argument(
        "--pretrain-steps",
        type=int,
        default=0,
        help="pre-train a cGAN per seed and real-data size for this many steps (realism alone); the naive "
        "generator and the HSG/HPG generators start from it (0: every generator starts from scratch)",
    )
    ap.add_argument(
        "--producer",
        choices=("cgan", "diffusion"),
        default="cgan",
        help="the generator family of the naive/HSG/HPG rows; diffusion: one pretrained diffusion model per "
        "seed and real-data size (--unet-steps), shared by every row without stage 1",
    )
    ap.add_argument("--unet-steps", type=int, default=2000, help="UNet steps of the shared diffusion model")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1,000 images, 2 epochs")
    ap.add_argument(
        "--summarise-only",
        action="store_true",
        help="tabulate the runs already scored under OUT/runs (while a table still runs); train nothing",
    )
    args = ap.parse_args(argv)
    if args.half_only and args.no_half:
        ap.error("--half-only and --no-half exclude each other")
    if args.quick:
        args.seeds = args.seeds[:1]
    user = [f"--{s}" for s in args.set]
    # diffusion: the user's generator.* settings are the joint rows' sampling keys, unknown to the base
    # pipeline's cGAN (and to real-only and the naive row); they reach those rows alone. (QUICK's cGAN
    # generator keys stay in ``extra``, which the diffusion rows filter.)
    joint_generator: list[str] = []
    if args.producer == "diffusion":
        joint_generator = [o for o in user if o.startswith("--generator.")]
        user = [o for o in user if not o.startswith("--generator.")]
    extra = list(QUICK if args.quick else ()) + user
    base = load_pipeline(args.pipeline, extra)
    out: Path = args.out
    (out / "runs").mkdir(parents=True, exist_ok=True)
    splits = _splits(base, args.quick)
    subset = base.data.subset
    assert subset is not None
    # seed by seed, so that an interrupted table has every row at the seeds it finished
    plan: list[tuple[str, str, bool, int]] = []
    for seed in args.seeds:
        for obj in args.objectives:
            if not args.half_only:
                plan += [(row, obj, False, seed) for row in args.rows]
            if obj == "simclr" and not args.no_half:
                plan += [(row, "simclr", True, seed) for row in HALF_ROWS]
    results: dict[tuple[str, str, bool], list[dict[str, float]]] = {}
    t_start = time.perf_counter()
    for row, obj, half, seed in plan:
        name = f"{row.replace('+', '_')}-{obj}-{'half' if half else 'all'}-s{seed}"
        if args.summarise_only:
            run = out / "runs" / name
            if (run / "scores.json").exists() and (run / "wall_time.json").exists():
                scores = json.loads((run / "scores.json").read_text())
                scores["train_seconds"] = json.loads((run / "wall_time.json").read_text())["seconds"]
                scores["seed"] = seed
                results.setdefault((row, obj, half), []).append(scores)
            continue
        overrides = [*extra, *ROWS[row], *OBJECTIVES[obj], f"--train.seed={seed}"]
        if obj == "moco" and args.quick:
            overrides += QUICK_MOCO
        data = [f"--data.subset={subset // 2}"] if half else []
        # half of the same fixed subset: the first subset/2 of its seeded permutation
        overrides += data
        init: list[str] = []
        pre_seconds = 0.0
        if args.producer == "diffusion" and row != "real-only":
            # one unconditional diffusion model per seed and real data, trained once (its own run: one
            # epoch whose stage 1 trains the UNet; lambda_hard 0, so its own exports are unguided); every
            # row samples it without stage 1, the naive row unguided
            pre = out / "runs" / f"diffusion-pretrain-{'half' if half else 'all'}-s{seed}"
            pre_seconds = train_once(
                pre,
                args.pipeline,
                [*(o for o in extra if not o.startswith("--generator.")), *data, *DIFFUSION_MODEL,
                 f"--generator.train_steps={args.unet_steps}",
                 "--train.epochs=1", "--hsg.warmup_epochs=0", "--hsg.lambda_hard=0", "--hpg.enabled=false",
                 "--generator.pool_size=64", f"--train.seed={seed}"],
            )  # fmt: skip
            overrides = [o for o in overrides if not o.startswith("--generator.")]
            if row == "naive":
                overrides += ["--generator.kind=naive", f"--generator.run={pre}"]
            else:
                overrides += [
                    *DIFFUSION_ROWS,
                    f"--generator.pretrained={pre / 'final' / 'diffusion'}",
                    "--generator.train_steps=0",
                    # the user's generator.* settings (guidance, pools) apply to the joint rows, not to the
                    # shared model nor the naive row
                    *joint_generator,
                ]
        elif args.pretrain_steps and row != "real-only":
            # one GAN per seed and real data, trained on realism alone before any encoder step; the
            # naive generator and the joint producers start from it (the half rows' from half the data)
            pre = out / "runs" / f"gan-pretrain-{'half' if half else 'all'}-s{seed}"
            pre_seconds = train_once(
                pre,
                args.pipeline,
                [
                    *extra,
                    *data,
                    "--hsg.enabled=true",
                    "--train.epochs=0",
                    f"--generator.pretrain_steps={args.pretrain_steps}",
                    f"--train.seed={seed}",
                ],
            )
            init = [f"--generator.init_run={pre}"]
            if row != "naive":
                overrides += init
        if row == "naive" and args.producer == "cgan":
            gan = out / "runs" / f"naive-generator-{'half-' if half else ''}s{seed}"
            epochs = base.train.epochs
            gan_overrides = [
                *extra,
                *data,
                *init,
                "--hsg.lambda_hard=0",
                f"--hsg.warmup_epochs={epochs}",
                f"--train.seed={seed}",
            ]
            gan_seconds = train_once(gan, args.pipeline, gan_overrides)
            # the naive producer's own section: the cGAN's generator keys do not apply to it
            overrides = [o for o in overrides if not o.startswith("--generator.")]
            overrides += ["--generator.kind=naive", f"--generator.run={gan}"]
        run = out / "runs" / name
        seconds = train_once(run, args.pipeline, overrides)
        scores_path = run / "scores.json"
        if scores_path.exists():
            scores = json.loads(scores_path.read_text())
        else:
            scores = _score(run, splits, base)
            scores_path.write_text(json.dumps(scores))
        scores = {**scores, "train_seconds": seconds, "seed": seed}
        if row == "naive" and args.producer == "cgan":
            scores["generator_seconds"] = gan_seconds
        if pre_seconds:
            scores["pretrain_seconds"] = pre_seconds
        results.setdefault((row, obj, half), []).append(scores)
        print(
            f"[{time.perf_counter() - t_start:7.0f}s] {name}: test linear {100 * scores['test_linear']:.2f} "
            f"kNN {100 * scores['test_knn']:.2f} | val linear {100 * scores['val_linear']:.2f} "
            f"({seconds:.0f} s)",
            flush=True,
        )
    table: list[dict[str, Any]] = []
    for (row, obj, half), per_seed in results.items():
        entry: dict[str, Any] = {"row": row, "objective": obj, "half": half, "n_seeds": len(per_seed)}
        for key in ("test_linear", "test_knn", "val_linear", "val_knn", "train_seconds"):
            entry[key] = _summarise([s[key] for s in per_seed])
        entry["per_seed"] = per_seed
        table.append(entry)
    meta = {
        "command": "python eval/method_table.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "pipeline": str(args.pipeline),
        "overrides": [*extra, *joint_generator],
        "subset": subset,
        "epochs": base.train.epochs,
        "pretrain_steps": args.pretrain_steps,
        "producer": args.producer,
        "unet_steps": args.unet_steps if args.producer == "diffusion" else None,
        "seeds": args.seeds,
        "val_size": len(splits.val),
        "test_size": len(splits.test),
        "total_seconds": time.perf_counter() - t_start,
    }
    paired = _paired(table)
    (out / "table.json").write_text(json.dumps({"meta": meta, "rows": table, "paired": paired}, indent=2))
    meta["paired"] = paired
    meta["references"] = _references(out, splits, base, args.seeds)
    md = _markdown(table, meta)
    (out / "table.md").write_text(md)
    pair_runs = sorted((out / "runs").glob("hsg_hpg-simclr-all-s*")) or sorted((out / "runs").glob("hpg-*"))
    _plots(out, table, pair_runs[0] if pair_runs else None)
    print(md)
    print(json.dumps({"total_seconds": round(meta["total_seconds"], 1), "out": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
