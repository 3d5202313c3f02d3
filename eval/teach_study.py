"""Does synthetic data teach where it can? Long training on scarce real data (issue 22).

    python eval/teach_study.py headroom [--settings NAME ...] [--seeds 0 1 2] [--out eval/results/teach]
    python eval/teach_study.py arms --settings NAME [--seeds 0 1 2 3 4] [--arms ...] [--pretrain-steps P]
                                    [--set section.key=value ...] [--out DIR] [--baselines DIR]
    python eval/teach_study.py summarise [--out eval/results/teach]
    python eval/teach_study.py list

Parts:
- ``headroom`` (the oracle check): for each setting, real-only SimCLR on its N real images against real-only
  on 10N real images at the same number of encoder steps (10N sees each image a tenth as often), and the
  accuracy-vs-epoch curve of both (val linear, kNN and 10-per-class probe at every checkpoint). A setting is
  *kept* when 10N beats N by at least 3 points of val linear accuracy (mean of the paired per-seed
  differences): there the data is the bottleneck, which is where synthetic data can show anything.
- ``arms`` (for the kept settings, on the hot-path code of issue 21): real-only, naive (a frozen cGAN trained
  on the same N images for as many GAN steps as the method's generators get, sampled at the method's
  synthetic share), HSG, HPG, HSG+HPG, the oracle (10N) and real-only at 2N (data efficiency), all at the
  setting's encoder steps, seed by seed; ``arms.md``/``arms.json`` per setting with mean +- std, the paired
  differences (every arm - real-only, method - naive, method - real-only at 2N), the best and worst method
  arm chosen on val and issue 22's targets read on test. Every method and naive run also gets its
  diagnostics from its checkpoints and log (``teach_diagnostics.py``: synthetic-or-real probe, D accuracy,
  pair similarity against s*(t), hardness, sample grids over epochs) in ``SETTING/diag/``. ``--set`` changes
  the method arms only (a variant, into its own ``--out``, with ``--baselines`` pointing at the shared
  real-only and naive runs). Written and smoke-tested on ``digits-smoke``; not yet run on a study setting.

Settings (``SETTINGS``; ``list`` prints them): Fashion-MNIST at 28 px with N = 1,000 or 2,500 real images and
a conv net narrow enough that a real-only run of 200 epochs costs at most about 5 minutes on one thread of
this 2-core CPU; and a fast screen on the embedded digits (N = 100 at 16 px, seconds per run, 10 seeds) for
trying variants before spending hours.

Protocol (fixed before any test-split number was read; eval/results/teach/README.md states it too):
- Data. Every split is class-balanced and fixed (seeded by ``ORDER_SEED``, the same for every run and seed):
  the validation split is ``val_per_class`` held-out *training* images per class (Fashion-MNIST 500,
  digits 35), never trained on; the rest of the training split is the pool, ordered per class, and a
  training set of M images is the first M/10 of every class's order, so N is inside 2N is inside 10N and none
  meets val. The test split is the source's own (Fashion-MNIST 10,000; digits 360).
- Encoder. SimCLR on the real images only (``hsg.enabled=false``), the setting's conv-net width and batch,
  Adam at a constant 1e-3 (the loop has no schedule), views as the pipeline's; seeds vary the encoder's
  initialisation, views and batch order, never the data.
- Equal encoder steps: a run on M images trains ``epochs x N / M`` epochs, so every run of a setting takes the
  same number of steps of the same batch size (the batch divides N).
- Metrics, all three always reported, on val and on test, from frozen backbone features (no augmentation):
  (1) **primary: linear probe fitted on the N labelled training images** (the N-image set, with its labels,
  for every run of a setting, the 10N run included, so runs differ only in their encoder); (2) weighted kNN
  on the same N images, k = 20, temperature 0.1 (k = 200 would exceed twice the images per class at N = 100
  digits); (3) a linear probe fitted on 10 labelled images per class (the first 10 per class of the order, a
  subset of N). Probes: features standardised on the fitting set, Adam lr 1e-2 with cosine decay,
  weight decay 1e-5, 100 epochs of batches of 64, seed 0 (``PROBE``).
- Choosing: settings, epochs and every later method setting are chosen on val only; test is reported.
- Curves are scored on val only (at every ``curve_every`` epochs at N; the 10N run at the same step counts).
- References scored the same way: raw pixels, and the encoder at its random initialisation (per seed).

Output (``--out``, default ``eval/results/teach``): one JSON file per finished run,
``SETTING/RUN.json`` (scores, curve, training and scoring cost, commit), written when the run lands, so it
can be committed on its own; ``SETTING/references.json``; ``table.md``, ``table.json`` and ``curves.png``
rebuilt after every run. The runs themselves (weights, checkpoints, logs) go to ``OUT/runs/SETTING/RUN``
(git-ignored); a finished run or result is never redone, an interrupted run is started again from scratch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "eval"))

from study_common import probe_scores, summarise, train_timed  # noqa: E402

from synthkit.config import DataConfig, EvalConfig, load_pipeline  # noqa: E402
from synthkit.data.sources import ImageSet, load_source  # noqa: E402
from synthkit.data.views import to_float  # noqa: E402
from synthkit.encoders.model import Encoder, extract_features, load_encoder_weights  # noqa: E402
from synthkit.registry import SOURCES  # noqa: E402
from synthkit.run_files.checkpoint import checkpoint_dirs, verify_checkpoint  # noqa: E402
from synthkit.run_files.final import load_final  # noqa: E402

ORDER_SEED = 2026
VAL_PER_CLASS = {"fashion-mnist": 500, "digits": 35}
BALANCED = {"fashion-mnist": "fashion-mnist-balanced", "digits": "digits-balanced"}
PROBE = EvalConfig(knn_k=20, knn_temperature=0.1, probe_epochs=100, probe_lr=1e-2, probe_weight_decay=1e-5)
PROBE_BATCH = 64
LABELS_PER_CLASS = 10  # the few-label probe
KEEP_MARGIN = 3.0  # points of val linear accuracy 10N must gain over N for a setting to be kept
METRICS = ("linear", "knn", "linear10")
SPLITS = ("val", "test")
KEYS = tuple(f"{s}_{m}" for s in SPLITS for m in METRICS)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One study setting: the data, the encoder's size and the training length at N."""

    source: str  # the base source: fashion-mnist | digits
    pipeline: str  # base pipeline, relative to the repository root
    n: int  # real images the method sees (their labels fit the probes)
    width: int  # conv-net width
    batch: int  # real images per step; divides n
    epochs: int  # epochs at N
    curve_every: int  # epochs at N between scored checkpoints
    size: int
    note: str = ""
    extra: tuple[str, ...] = ()
    oracle: int = 10  # the oracle's real data: oracle x N

    def overrides(self) -> list[str]:
        return [
            f"--data.name={BALANCED[self.source]}",
            f"--data.size={self.size}",
            f"--data.subset_seed={ORDER_SEED}",
            f"--encoder.width={self.width}",
            f"--train.batch_size={self.batch}",
            "--train.knn_every=0",  # the loop's monitor would read the test split
            "--train.trackers=[]",
            "--train.keep_checkpoints=1000",
            *self.extra,
        ]

    def epochs_at(self, m: int) -> tuple[int, int]:
        """Epochs and checkpoint interval (epochs) for a run on m real images: the steps of N's run."""
        if (self.epochs * self.n) % m or (self.curve_every * self.n) % m:
            raise SystemExit(f"{m} real images do not give whole epochs at the steps of N={self.n}")
        return self.epochs * self.n // m, self.curve_every * self.n // m

    def steps(self) -> int:
        return self.epochs * (self.n // self.batch)


SETTINGS: dict[str, Setting] = {
    # the screen: seconds per run
    "digits-n100": Setting(
        "digits", "pipelines/tiny.yaml", n=100, width=8, batch=50, epochs=200, curve_every=10, size=16,
        note="embedded digits, 10 per class, 16 px, the tiny pipeline's heads",
        extra=("--train.log_every=5",),
    ),
    "digits-n100-e1000": Setting(
        "digits", "pipelines/tiny.yaml", n=100, width=8, batch=50, epochs=1000, curve_every=50, size=16,
        note="the screen, 5x longer", extra=("--train.log_every=25",),
    ),
    # added (session of 19:45 UTC) after no setting kept: the conv net has one conv per stage (~25k weights at
    # width 8), so 100 images under strong augmentation are no harder to fit than 1,000: more capacity, on
    # the cheap screen first
    "digits-n100-w32": Setting(
        "digits", "pipelines/tiny.yaml", n=100, width=32, batch=50, epochs=200, curve_every=10, size=16,
        note="the screen at width 32", extra=("--train.log_every=5",),
    ),
    "digits-n100-w64": Setting(
        "digits", "pipelines/tiny.yaml", n=100, width=64, batch=50, epochs=200, curve_every=10, size=16,
        note="the screen at width 64", extra=("--train.log_every=5",),
    ),
    # the script's own smoke test (seconds): not a study setting
    "digits-smoke": Setting(
        "digits", "pipelines/tiny.yaml", n=100, width=8, batch=50, epochs=10, curve_every=10, size=16,
        note="smoke test of the script", extra=("--train.log_every=2",),
    ),
    "fmnist-n1000-w16": Setting(
        "fashion-mnist", "pipelines/fashion-mnist-method.yaml", n=1000, width=16, batch=100, epochs=200,
        curve_every=10, size=28,
    ),
    # added after fmnist-n1000-w16 showed no gap at 2,000 steps (10N - N = -0.12 val linear): more passes
    # over fewer images, at the same cost per run
    "fmnist-n250-w16": Setting(
        "fashion-mnist", "pipelines/fashion-mnist-method.yaml", n=250, width=16, batch=50, epochs=800,
        curve_every=40, size=28,
    ),
    "fmnist-n500-w16": Setting(
        "fashion-mnist", "pipelines/fashion-mnist-method.yaml", n=500, width=16, batch=50, epochs=400,
        curve_every=20, size=28,
    ),
    # added after n1000-w16 and n250-w16 showed no gap: more capacity (the method table's width 32; ~2x a
    # width-16 step, so ~7 min a run on an idle thread) and more steps (N=1,000 x 800 epochs, ~12 min a run)
    "fmnist-n250-w32": Setting(
        "fashion-mnist", "pipelines/fashion-mnist-method.yaml", n=250, width=32, batch=50, epochs=800,
        curve_every=40, size=28,
    ),
    "fmnist-n1000-w16-e800": Setting(
        "fashion-mnist", "pipelines/fashion-mnist-method.yaml", n=1000, width=16, batch=100, epochs=800,
        curve_every=40, size=28,
    ),
    "fmnist-n1000-w8": Setting(
        "fashion-mnist", "pipelines/fashion-mnist-method.yaml", n=1000, width=8, batch=100, epochs=200,
        curve_every=10, size=28,
    ),
    "fmnist-n2500-w8": Setting(
        "fashion-mnist", "pipelines/fashion-mnist-method.yaml", n=2500, width=8, batch=100, epochs=200,
        curve_every=10, size=28,
    ),
}  # fmt: skip


# --------------------------------------------------------------------------- data


def balanced_order(labels: np.ndarray, val_per_class: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The validation indices (``val_per_class`` of every class) and, per class, the pool's order."""
    rng = np.random.default_rng(seed)
    val, pool = [], []
    for c in np.unique(labels):
        perm = rng.permutation(np.flatnonzero(labels == c))
        if len(perm) <= val_per_class:
            raise SystemExit(f"class {c} has {len(perm)} images, not more than {val_per_class} for val")
        val.append(perm[:val_per_class])
        pool.append(perm[val_per_class:])
    return np.sort(np.concatenate(val)), pool


def balanced_subset(pool: list[np.ndarray], m: int) -> np.ndarray:
    """The first m / classes images of every class's pool order (sorted indices)."""
    if m % len(pool):
        raise SystemExit(f"a class-balanced subset of {m} images needs a multiple of {len(pool)}")
    k = m // len(pool)
    short = [len(p) for p in pool if len(p) < k]
    if short:
        raise SystemExit(f"{m} images need {k} per class; a class has only {short[0]} outside val")
    return np.sort(np.concatenate([p[:k] for p in pool]))


def _base_cfg(cfg: DataConfig, base: str) -> DataConfig:
    return dataclasses.replace(cfg, name=base, subset=None)


def _take(s: ImageSet, idx: np.ndarray) -> ImageSet:
    t = torch.from_numpy(idx)
    return ImageSet(s.images[t], s.labels[t] if s.labels is not None else None, s.name, s.classes)


def _balanced_loader(base: str) -> Any:
    def load(cfg: DataConfig, split: str) -> ImageSet:
        """``base``'s training pool outside the fixed val split, the first ``subset`` of it class-balanced
        (``subset_seed`` seeds the order); the test split is ``base``'s own."""
        full = load_source(_base_cfg(cfg, base), split)
        if split != "train":
            return full
        assert full.labels is not None
        val, pool = balanced_order(full.labels.numpy(), VAL_PER_CLASS[base], cfg.subset_seed)
        idx = balanced_subset(pool, cfg.subset) if cfg.subset is not None else np.sort(np.concatenate(pool))
        return _take(full, idx)

    return load


def register_sources() -> None:
    """The class-balanced sources this study trains on (``data.name``), in this process."""
    for base, name in BALANCED.items():
        if name not in SOURCES:
            SOURCES.register(name, _balanced_loader(base))


@dataclasses.dataclass
class Splits:
    labelled: ImageSet  # the N training images with labels: the probes' fitting set
    labelled10: ImageSet  # 10 per class of them
    val: ImageSet
    test: ImageSet


def splits(setting: Setting) -> Splits:
    cfg = DataConfig(name=setting.source, size=setting.size)
    full = load_source(cfg, "train")
    assert full.labels is not None
    val, pool = balanced_order(full.labels.numpy(), VAL_PER_CLASS[setting.source], ORDER_SEED)
    return Splits(
        _take(full, balanced_subset(pool, setting.n)),
        _take(full, balanced_subset(pool, LABELS_PER_CLASS * len(pool))),
        _take(full, val),
        load_source(cfg, "test"),
    )


# --------------------------------------------------------------------------- scoring


def score_features(featurize: Any, sp: Splits, which: tuple[str, ...] = SPLITS) -> dict[str, float]:
    """The three metrics on each split in ``which`` (``val_linear``, ``val_knn``, ``val_linear10``...)."""
    f_fit, f_fit10 = featurize(sp.labelled.images), featurize(sp.labelled10.images)
    out: dict[str, float] = {}
    for name in which:
        split: ImageSet = getattr(sp, name)
        f = featurize(split.images)
        s = probe_scores(f_fit, sp.labelled.labels, f, split.labels, PROBE, probe_batch_size=PROBE_BATCH)
        s10 = probe_scores(
            f_fit10, sp.labelled10.labels, f, split.labels, PROBE, probe_batch_size=PROBE_BATCH, knn=False
        )
        out.update({f"{name}_linear": s["linear"], f"{name}_knn": s["knn"]})
        out[f"{name}_linear10"] = s10["linear"]
    return out


def _encoder_featurize(enc: Encoder) -> Any:
    return lambda x: extract_features(enc, x)


def score_curve(run: Path, sp: Splits) -> list[dict[str, Any]]:
    """Val metrics at every checkpoint of ``run`` (each verified against its checksums first)."""
    cfg = load_final(run).cfg
    out = []
    for ckpt in checkpoint_dirs(run / "checkpoints"):
        verify_checkpoint(ckpt)
        state = json.loads((ckpt / "loop_state.json").read_text())
        epoch, step = state["epoch"], state["step"]
        enc = Encoder(cfg.encoder, sp.labelled.images.shape[1])
        load_encoder_weights(enc, ckpt / "model.safetensors")
        out.append({"epoch": epoch, "step": step, **score_features(_encoder_featurize(enc), sp, ("val",))})
    return out


def references(out: Path, setting: Setting, sp: Splits, seeds: list[int]) -> dict[str, Any]:
    """Raw pixels and the encoder at its random initialisation (per seed), scored the same way."""
    path = out / "references.json"
    refs = json.loads(path.read_text()) if path.exists() else {}
    if "pixels" not in refs:
        refs["pixels"] = score_features(lambda x: to_float(x).flatten(1), sp)
    cfg = load_pipeline(ROOT / setting.pipeline, [*setting.overrides(), f"--data.subset={setting.n}"])
    for seed in seeds:
        key = f"random-init-s{seed}"
        if key not in refs:
            torch.manual_seed(seed)  # the loop's set_seed(train.seed) before building the encoder
            enc = Encoder(cfg.encoder, sp.labelled.images.shape[1])
            refs[key] = score_features(_encoder_featurize(enc), sp)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(refs, indent=2))
    return refs


# --------------------------------------------------------------------------- runs


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "synthkit"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        return head + ("+dirty-synthkit" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _scored_run(
    out: Path,
    name: str,
    setting: Setting,
    sp: Splits,
    *,
    run_name: str,
    arm: str,
    m: int,
    seed: int,
    overrides: list[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (unless done) and score one run on the first m real images; its result is written to
    ``OUT/NAME/RUN_NAME.json`` when it lands (and never redone once there)."""
    result_path = out / name / f"{run_name}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    epochs, every = setting.epochs_at(m)
    overrides = [
        *setting.overrides(),
        f"--data.subset={m}",
        f"--train.epochs={epochs}",
        f"--train.checkpoint_every={every}",
        f"--train.seed={seed}",
        *overrides,
    ]
    run = out / "runs" / name / run_name
    print(f"[{time.strftime('%H:%M:%S')}] {name}/{run_name}: training {epochs} epochs", flush=True)
    timing = train_timed(run, ROOT / setting.pipeline, overrides)
    t0, c0 = time.perf_counter(), time.process_time()
    final = score_features(_encoder_featurize(load_final(run).encoder), sp)
    curve = score_curve(run, sp)
    result = {
        "setting": name,
        "run": run_name,
        "arm": arm,
        "real_images": m,
        "seed": seed,
        "epochs": epochs,
        "steps": epochs * (m // setting.batch),
        "scores": final,
        "curve": curve,
        "train": timing,
        "score_seconds": time.perf_counter() - t0,
        "score_cpu_seconds": time.process_time() - c0,
        "pipeline": setting.pipeline,
        "overrides": overrides,
        "commit": _commit(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    _write_json(result_path, result)
    s = final
    print(
        f"[{time.strftime('%H:%M:%S')}] {name}/{run_name}: val linear {100 * s['val_linear']:.2f} kNN "
        f"{100 * s['val_knn']:.2f} 10/class {100 * s['val_linear10']:.2f} | train {timing['seconds']:.0f} s "
        f"wall, {timing['cpu_seconds']:.0f} s CPU, load {timing['load_mean']:.1f}",
        flush=True,
    )
    return result


def real_only(out: Path, name: str, setting: Setting, sp: Splits, m: int, seed: int) -> dict[str, Any]:
    """Real-only SimCLR on the first m real images (``real-only-nM-sSEED``)."""
    return _scored_run(
        out, name, setting, sp,
        run_name=f"real-only-n{m}-s{seed}",
        arm="real-only" if m == setting.n else f"real-only at {m // setting.n}N",
        m=m, seed=seed, overrides=["--hsg.enabled=false"],
    )  # fmt: skip


# --------------------------------------------------------------------------- arms

#: the method's arms: their sections (on the setting's pipeline; HSG and HPG keys as the pipeline has them)
JOINT: dict[str, tuple[str, ...]] = {
    "hsg": ("--hsg.enabled=true", "--hpg.enabled=false"),
    "hpg": ("--hsg.enabled=false", "--hpg.enabled=true"),
    "hsg+hpg": ("--hsg.enabled=true", "--hpg.enabled=true"),
}
#: real-only arms: their real data as a multiple of N (the oracle is the setting's ``oracle``)
REAL_ARMS = {"real-only": 1, "real-2n": 2, "oracle": 0}
ARMS = ("real-only", "naive", "hsg", "hpg", "hsg+hpg", "oracle", "real-2n")
METHOD_ARMS = tuple(JOINT)


def _gan_run(
    out: Path, name: str, setting: Setting, run_name: str, seed: int, steps: int, init: Path | None
) -> tuple[Path, dict[str, Any]]:
    """A cGAN trained on realism alone for ``steps`` steps on the N real images (no encoder step: the
    encoder stays at its initialisation, which only sets the k-means conditions), from ``init``'s weights."""
    run = out / "runs" / name / run_name
    overrides = [
        *setting.overrides(),
        f"--data.subset={setting.n}",
        "--hsg.enabled=true",
        "--hpg.enabled=false",
        "--train.epochs=0",
        f"--generator.pretrain_steps={steps}",
        f"--train.seed={seed}",
        *([f"--generator.init_run={init}"] if init is not None else []),
    ]
    print(f"[{time.strftime('%H:%M:%S')}] {name}/{run_name}: {steps} GAN steps", flush=True)
    return run, train_timed(run, ROOT / setting.pipeline, overrides)


def arm_run(
    out: Path,
    name: str,
    setting: Setting,
    sp: Splits,
    arm: str,
    seed: int,
    *,
    pretrain_steps: int = 0,
    method_set: tuple[str, ...] = (),
    baselines: Path | None = None,
    diagnostics: bool = True,
) -> dict[str, Any]:
    """One arm at one seed, all at the setting's encoder steps and real batch.

    - ``real-only``, ``real-2n``, ``oracle``: real-only SimCLR on N, 2N, oracle x N real images (results
      shared with the head-room part); kept in ``baselines`` (default: ``out``).
    - ``naive``: a cGAN trained on the N images with realism alone for as many GAN steps as the method's
      generators get (``pretrain_steps`` + one per encoder step), then frozen; its EMA samples are mixed into
      every step at ``hsg.synthetic_ratio`` (the method's synthetic share). Kept in ``baselines``.
    - ``hsg``, ``hpg``, ``hsg+hpg``: the method, trained jointly; with ``pretrain_steps`` every generator
      starts from one cGAN per seed pre-trained on realism alone (the naive arm's generator starts from it
      too). ``method_set`` (``section.key=value``) applies to these arms only: a variant's changes.

    The method's generators see only the N unlabelled real images.
    """
    base_out = baselines or out
    if arm in REAL_ARMS:
        factor = REAL_ARMS[arm] or setting.oracle
        return real_only(base_out, name, setting, sp, factor * setting.n, seed)
    pre: Path | None = None
    extra: dict[str, Any] = {"pretrain_steps": pretrain_steps}
    gan_out = base_out if arm == "naive" else out
    if pretrain_steps:
        pre, t = _gan_run(gan_out, name, setting, f"gan-pretrain-p{pretrain_steps}-s{seed}", seed,
                          pretrain_steps, None)  # fmt: skip
        extra["pretrain"] = t
    cfg = load_pipeline(ROOT / setting.pipeline, [*setting.overrides(), f"--data.subset={setting.n}"])
    suffix = f"-p{pretrain_steps}" if pretrain_steps else ""
    if arm == "naive":
        gan, t = _gan_run(base_out, name, setting, f"naive-gan{suffix}-s{seed}", seed, setting.steps(), pre)
        extra["generator"] = t
        overrides = [
            "--hsg.enabled=false",
            "--hpg.enabled=false",
            "--generator.kind=naive",
            f"--generator.run={gan}",
            f"--generator.synthetic_ratio={cfg.hsg.synthetic_ratio}",
        ]
        result = _scored_run(
            base_out, name, setting, sp, run_name=f"naive{suffix}-n{setting.n}-s{seed}", arm="naive",
            m=setting.n, seed=seed, overrides=overrides, extra=extra,
        )  # fmt: skip
        target = base_out
    else:
        overrides = [*JOINT[arm], *(f"--{o}" for o in method_set)]
        if pre is not None:
            overrides.append(f"--generator.init_run={pre}")
        extra["method_set"] = list(method_set)
        result = _scored_run(
            out, name, setting, sp, run_name=f"{arm.replace('+', '_')}{suffix}-n{setting.n}-s{seed}", arm=arm,
            m=setting.n, seed=seed, overrides=overrides, extra=extra,
        )  # fmt: skip
        target = out
    if diagnostics and "diagnostics" not in result:
        result["diagnostics"] = run_diagnostics(target, name, result["run"], sp)
        _write_json(target / name / f"{result['run']}.json", result)
    return result


def _mean_or_none(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def run_diagnostics(out: Path, name: str, run_name: str, sp: Splits) -> dict[str, Any]:
    """teach_diagnostics.diagnose on a finished run: the per-checkpoint values (in the result), the log's
    series summarised, a four-panel plot ``NAME/diag/RUN.png`` and the sample grid ``NAME/diag/RUN-grid.png``.
    """
    from teach_diagnostics import diagnose, plot

    t0 = time.perf_counter()
    diag = diagnose(out / "runs" / name / run_name, sp.labelled, sp.val)
    folder = out / name / "diag"
    folder.mkdir(parents=True, exist_ok=True)
    plot(diag, f"{name} / {run_name}", folder / f"{run_name}.png")
    grid = diag.pop("_grid")
    if grid is not None:
        grid.save(folder / f"{run_name}-grid.png")
    log = diag.pop("log")
    q = max(1, len(log["step"]) // 10)  # the log in ten slices: its mean per slice
    diag["log_tenths"] = {  # None where a slice logged nothing of it (e.g. before the warm-up ends)
        k: [_mean_or_none(v[i : i + q]) for i in range(0, len(v), q)] for k, v in log.items()
    }
    diag["seconds"] = time.perf_counter() - t0
    return diag


def arms_table(out: Path, name: str, baselines: Path) -> dict[str, Any]:
    """Per arm: mean +- std over seeds of every metric; paired differences (same seed) of every arm minus
    real-only, the method arms minus naive and minus real-only at 2N (data efficiency); the best method arm
    chosen on val linear; the targets of issue 22 checked on test."""
    setting = SETTINGS[name]
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for folder in {out, baselines}:
        for r in run_results(folder / name):
            arm = r["arm"]
            if arm.startswith("real-only at"):
                arm = (
                    "oracle" if r["real_images"] == setting.oracle * setting.n else f"real-{arm[13:].lower()}"
                )
            if folder == baselines and arm in METHOD_ARMS and out != baselines:
                continue  # a variant's method arms are its own
            by.setdefault(arm, {})[r["seed"]] = r
    arm_seeds = set().union(*(by[a] for a in METHOD_ARMS if a in by))
    if arm_seeds:  # every row over the method arms' seeds (the head-room part may have run more)
        by = {arm: {s: r for s, r in runs.items() if s in arm_seeds} for arm, runs in by.items()}
    rows = {
        arm: {
            "seeds": sorted(runs),
            **{k: summarise([100 * runs[s]["scores"][k] for s in sorted(runs)]) for k in KEYS},
            "train_seconds": summarise([runs[s]["train"]["seconds"] for s in sorted(runs)]),
        }
        for arm, runs in by.items()
    }
    paired = []
    for arm, runs in by.items():
        refs = [] if arm == "real-only" else ["real-only"]
        if arm in METHOD_ARMS:
            refs += ["naive", "real-2n"]
        for ref in refs:
            common = sorted(set(runs) & set(by.get(ref, {})))
            if not common:
                continue
            entry: dict[str, Any] = {"arm": arm, "minus": ref, "seeds": common}
            for k in KEYS:
                d = [100 * (runs[s]["scores"][k] - by[ref][s]["scores"][k]) for s in common]
                entry[k] = {**summarise(d), "per_seed": d}
            paired.append(entry)
    methods = [a for a in METHOD_ARMS if a in rows]
    verdict: dict[str, Any] = {}
    if methods:
        best = max(methods, key=lambda a: rows[a]["val_linear"]["mean"])
        worst = min(methods, key=lambda a: rows[a]["val_linear"]["mean"])
        verdict = {"best_on_val": best, "worst_on_val": worst}
        pr = {(p["arm"], p["minus"]): p for p in paired}
        if (best, "real-only") in pr:
            verdict["best_minus_real_only_test_linear"] = pr[(best, "real-only")]["test_linear"]["mean"]
            verdict["target_2_points"] = verdict["best_minus_real_only_test_linear"] >= 2.0
        if (best, "naive") in pr:
            p = pr[(best, "naive")]["test_linear"]
            verdict["best_minus_naive_test_linear"] = p
            # a standard deviation needs two seeds at least
            verdict["target_above_naive"] = p["mean"] > 2 * p["std"] if len(p["per_seed"]) > 1 else None
        if (best, "real-2n") in pr:
            verdict["best_minus_real_2n_test_linear"] = pr[(best, "real-2n")]["test_linear"]["mean"]
            verdict["target_data_efficiency"] = verdict["best_minus_real_2n_test_linear"] >= 0
    return {"setting": name, "rows": rows, "paired": paired, "verdict": verdict}


def arms_markdown(t: dict[str, Any]) -> str:
    lines = [
        f"# Arms: {t['setting']} (equal encoder steps; accuracy in %, mean +- std over seeds)",
        "",
        "| arm | seeds | val linear | val kNN | val 10/class | test linear | test kNN | test 10/class "
        "| train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = [a for a in ARMS if a in t["rows"]] + [a for a in t["rows"] if a not in ARMS]
    for arm in order:
        r = t["rows"][arm]
        cells = " | ".join(_fmt(r[k], len(r["seeds"])) for k in KEYS)
        lines.append(f"| {arm} | {len(r['seeds'])} | {cells} | {r['train_seconds']['mean']:.0f} |")
    lines += [
        "",
        "Paired differences (same seed), points, mean +- std (per-seed values in the JSON):",
        "",
        "| difference | seeds | val linear | val kNN | val 10/class | test linear | test kNN "
        "| test 10/class |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in t["paired"]:
        cells = " | ".join(f"{p[k]['mean']:+.2f} +- {p[k]['std']:.2f}" for k in KEYS)
        lines.append(f"| {p['arm']} - {p['minus']} | {len(p['seeds'])} | {cells} |")
    if t["verdict"]:
        lines += ["", "Verdict (best and worst method arm chosen on val linear; targets on test linear):", ""]
        lines += [f"- {k}: {v}" for k, v in t["verdict"].items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- tables


def run_results(folder: Path) -> list[dict[str, Any]]:
    """The per-run results in ``folder`` (the JSON files with an ``arm``; not the tables)."""
    out = []
    for path in sorted(folder.glob("*.json")):
        r = json.loads(path.read_text())
        if isinstance(r, dict) and "arm" in r and "scores" in r:
            out.append(r)
    return out


def _results(out: Path, name: str) -> dict[str, dict[int, dict[str, Any]]]:
    """Per arm label, per seed: the finished results of a setting."""
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for r in run_results(out / name):
        if not r["arm"].startswith("real-only"):
            continue
        by.setdefault(f"n{r['real_images']}:{r['arm']}", {})[r["seed"]] = r
    return by


SMOOTH = 3  # checkpoints in the moving mean the curve's shape is read from (one checkpoint is noisy)


def _smoothed(curve: list[dict[str, Any]], key: str = "val_linear") -> list[float]:
    acc = [100 * c[key] for c in curve]
    return [float(np.mean(acc[max(0, i - SMOOTH + 1) : i + 1])) for i in range(len(acc))]


def _curve_shape(curve: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the val-linear curve peaks, what it ends at, and how much it moved over its last quarter, read
    from the moving mean over ``SMOOTH`` checkpoints (a single checkpoint's value moves by ~1 point)."""
    acc = _smoothed(curve)
    best = int(np.argmax(acc))
    q = max(1, len(acc) // 4)
    last_quarter = acc[-1] - acc[-1 - q] if len(acc) > q else 0.0
    shape = "overfits" if acc[-1] < acc[best] - 1.0 else "still rising" if last_quarter > 1.0 else "plateau"
    return {
        "best_epoch": curve[best]["epoch"],
        "best_val_linear": acc[best],
        "final_val_linear": acc[-1],
        "last_quarter_change": last_quarter,
        "shape": shape,
    }


def headroom_table(out: Path) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name, setting in SETTINGS.items():
        if not (out / name).is_dir():
            continue
        by = _results(out, name)
        n_runs = by.get(f"n{setting.n}:real-only", {})
        o_runs = by.get(f"n{setting.oracle * setting.n}:real-only at {setting.oracle}N", {})
        if not n_runs:
            continue
        entry: dict[str, Any] = {"setting": dataclasses.asdict(setting), "steps": setting.steps(), "rows": {}}
        for label, runs in (("N", n_runs), (f"{setting.oracle}N", o_runs)):
            if not runs:
                continue
            seeds = sorted(runs)
            entry["rows"][label] = {
                "real_images": runs[seeds[0]]["real_images"],
                "epochs": runs[seeds[0]]["epochs"],
                "seeds": seeds,
                **{k: summarise([100 * runs[s]["scores"][k] for s in seeds]) for k in KEYS},
                "train_seconds": summarise([runs[s]["train"]["seconds"] for s in seeds]),
                "train_cpu_seconds": summarise([runs[s]["train"]["cpu_seconds"] for s in seeds]),
                "load_mean": summarise([runs[s]["train"]["load_mean"] for s in seeds]),
                "curve_shape": {s: _curve_shape(runs[s]["curve"]) for s in seeds},
            }
        common = sorted(set(n_runs) & set(o_runs))
        if common:
            entry["paired"] = {
                "seeds": common,
                **{
                    k: summarise([100 * (o_runs[s]["scores"][k] - n_runs[s]["scores"][k]) for s in common])
                    for k in KEYS
                },
                # a robustness read, not the protocol's metric: the mean of the last SMOOTH checkpoints
                **{
                    f"{k}_last{SMOOTH}": summarise(
                        [
                            _smoothed(o_runs[s]["curve"], k)[-1] - _smoothed(n_runs[s]["curve"], k)[-1]
                            for s in common
                        ]
                    )
                    for k in ("val_linear", "val_knn", "val_linear10")
                },
            }
            entry["kept"] = entry["paired"]["val_linear"]["mean"] >= KEEP_MARGIN
        refs_path = out / name / "references.json"
        if refs_path.exists():
            refs = json.loads(refs_path.read_text())
            rnd = [v for k, v in refs.items() if k.startswith("random-init")]
            entry["references"] = {
                "pixels": {k: 100 * refs["pixels"][k] for k in KEYS},
                "random-init": {k: summarise([100 * r[k] for r in rnd]) for k in KEYS} if rnd else None,
            }
        table[name] = entry
    return table


def _fmt(v: dict[str, float], n: int) -> str:
    return f"{v['mean']:.2f} +- {v['std']:.2f}" if n > 1 else f"{v['mean']:.2f}"


def headroom_markdown(table: dict[str, Any]) -> str:
    lines = [
        "# Head-room: real-only at N vs real-only at 10N, equal encoder steps",
        "",
        "Accuracy in %, mean +- std over seeds (one value at one seed). Linear: probe fitted on the N "
        "labelled images; kNN: k=20 on the same N; 10/class: probe fitted on 10 labelled images per class. "
        "val = held-out training images (settings are chosen on it), test = the test split (reported).",
        f"A setting is kept when 10N - N >= {KEEP_MARGIN:g} points of val linear (mean paired difference).",
        "",
        "| setting | real images | epochs | steps | seeds | val linear | val kNN | val 10/class | "
        "test linear | test kNN | test 10/class | train s (CPU s) | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in table.items():
        for label, r in e["rows"].items():
            n = len(r["seeds"])
            cells = " | ".join(_fmt(r[k], n) for k in KEYS)
            lines.append(
                f"| {name} | {r['real_images']:,} ({label}) | {r['epochs']} | {e['steps']} | {n} | {cells} | "
                f"{r['train_seconds']['mean']:.0f} ({r['train_cpu_seconds']['mean']:.0f}) | "
                f"{r['load_mean']['mean']:.1f} |"
            )
        refs = e.get("references")
        if refs:
            pix = refs["pixels"]
            cells = " | ".join(f"{pix[k]:.2f}" for k in KEYS)
            lines.append(f"| {name} | raw pixels | | | | {cells} | | |")
            if refs["random-init"]:
                rnd = refs["random-init"]
                lines.append(
                    f"| {name} | random-init encoder | | | | "
                    + " | ".join(f"{rnd[k]['mean']:.2f}" for k in KEYS)
                    + " | | |"
                )
    lines += [
        "",
        "Paired 10N - N (same seed), points:",
        "",
        "| setting | seeds | val linear | val kNN | val 10/class | test linear | test kNN | test 10/class "
        f"| val linear / kNN / 10/class, mean of the last {SMOOTH} checkpoints | kept |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in table.items():
        p = e.get("paired")
        if not p:
            continue
        n = len(p["seeds"])
        cells = " | ".join(
            (f"{p[k]['mean']:+.2f} +- {p[k]['std']:.2f}" if n > 1 else f"{p[k]['mean']:+.2f}") for k in KEYS
        )
        last = " / ".join(
            f"{p[f'{k}_last{SMOOTH}']['mean']:+.2f}" for k in ("val_linear", "val_knn", "val_linear10")
        )
        lines.append(f"| {name} | {n} | {cells} | {last} | {'**yes**' if e['kept'] else 'no'} |")
    lines += [
        "",
        f"The real-only curve (val linear, moving mean over {SMOOTH} checkpoints; per seed): best epoch and "
        "value, final value, change over the last quarter of training, and its shape (overfits: final > 1 "
        "point below the best; still rising: > 1 point gained over the last quarter; else plateau):",
        "",
        "| setting | run | seed | best epoch | best val linear | final val linear | last-quarter change "
        "| shape |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in table.items():
        for label, r in e["rows"].items():
            for seed, c in r["curve_shape"].items():
                lines.append(
                    f"| {name} | {label} | {seed} | {c['best_epoch']} | {c['best_val_linear']:.2f} | "
                    f"{c['final_val_linear']:.2f} | {c['last_quarter_change']:+.2f} | {c['shape']} |"
                )
    return "\n".join(lines) + "\n"


def curves_plot(out: Path, table: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    if not names:
        return
    cols = min(len(names), 4)
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.6 * cols, 8), 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        setting = SETTINGS[name]
        by = _results(out, name)
        for key, runs in sorted(by.items()):
            m = int(key.split(":")[0][1:])
            color = "#4c72b0" if m == setting.n else "#dd8452"
            label = f"{m:,} real" + (" (N)" if m == setting.n else f" ({m // setting.n}N)")
            for i, (_, r) in enumerate(sorted(runs.items())):
                steps = [c["step"] for c in r["curve"]]
                ax.plot(steps, [100 * c["val_linear"] for c in r["curve"]], "-", color=color, alpha=0.8,
                        label=f"{label}: linear" if i == 0 else None)  # fmt: skip
                ax.plot(steps, [100 * c["val_knn"] for c in r["curve"]], ":", color=color, alpha=0.8,
                        label=f"{label}: kNN" if i == 0 else None)  # fmt: skip
        refs = table[name].get("references")
        if refs:
            ax.axhline(
                refs["pixels"]["val_linear"], color="grey", lw=0.8, ls="--", label="raw pixels: linear"
            )
        ax.set_title(f"{name}", fontsize=10)
        ax.set_xlabel("encoder steps")
        ax.set_ylabel("val accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        "real-only SimCLR: val accuracy vs encoder steps (probes on the N labelled images)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def summarise_all(out: Path) -> None:
    for name in SETTINGS:  # the arms' tables where arms ran
        if any(r["arm"] in METHOD_ARMS + ("naive",) for r in run_results(out / name)):
            t = arms_table(out, name, out)
            _write_json(out / name / "arms.json", t)
            (out / name / "arms.md").write_text(arms_markdown(t))
    table = headroom_table(out)
    (out / "table.json").write_text(json.dumps(table, indent=2))
    (out / "table.md").write_text(headroom_markdown(table))
    curves_plot(out, table)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=("headroom", "arms", "summarise", "list"))
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "teach")
    studied = [n for n in SETTINGS if n != "digits-smoke"]  # the smoke setting only when named
    ap.add_argument("--settings", nargs="+", default=studied, choices=list(SETTINGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="arms: the arms to run")
    ap.add_argument(
        "--pretrain-steps",
        type=int,
        default=0,
        help="arms: pre-train one cGAN per seed for this many realism-only steps; every method generator and "
        "the naive generator start from it (0: from scratch)",
    )
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        help="arms: section.key=value overrides of the method arms only (a variant: use its own --out and "
        "--baselines DIR for the shared real-only and naive arms)",
    )
    ap.add_argument("--baselines", type=Path, help="arms: where the real-only and naive arms live (--out)")
    ap.add_argument("--no-diagnostics", action="store_true", help="arms: skip the per-run diagnostics")
    args = ap.parse_args(argv)
    register_sources()
    out: Path = args.out
    if args.part == "list":
        for name, s in SETTINGS.items():
            print(name, dataclasses.asdict(s), f"steps={s.steps()}")
        return 0
    if args.part == "headroom":
        for name in args.settings:
            setting = SETTINGS[name]
            sp = splits(setting)
            references(out / name, setting, sp, args.seeds)
            for seed in args.seeds:
                for m in (setting.n, setting.oracle * setting.n):
                    real_only(out, name, setting, sp, m, seed)
                    summarise_all(out)
    if args.part == "arms":
        baselines = args.baselines or out
        for name in args.settings:
            setting = SETTINGS[name]
            sp = splits(setting)
            references(baselines / name, setting, sp, args.seeds)
            for seed in args.seeds:  # seed by seed: an interrupted table has every arm at the seeds it did
                for arm in args.arms:
                    arm_run(
                        out, name, setting, sp, arm, seed, pretrain_steps=args.pretrain_steps,
                        method_set=tuple(args.set), baselines=baselines,
                        diagnostics=not args.no_diagnostics,
                    )  # fmt: skip
                    t = arms_table(out, name, baselines)
                    _write_json(out / name / "arms.json", t)
                    (out / name / "arms.md").write_text(arms_markdown(t))
        for name in args.settings:
            print((out / name / "arms.md").read_text())
        return 0
    summarise_all(out)
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
