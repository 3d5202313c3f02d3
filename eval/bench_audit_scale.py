"""The audit at scale: 200,000 x 200,000 samples on the approximate path, against the exact audit of a
20,000 x 20,000 subset and the approximate path on that same subset (so the estimate's error is visible).

Data (written once as shard sets, not timed): the *real* set is N perturbed Fashion-MNIST *train* images
(image ``i`` is train image ``i mod 60,000``, shifted by up to 2 px with Gaussian pixel noise, sigma 12);
the *synthetic* set is N perturbed *test* images the same way, except that every 1,000th sample is an exact
copy of a real sample (``real[(i // 1000) * 7 mod S]``, ``S`` the subset size), the memorisation the audit
should find: N / 1,000 planted copies, ``S`` / 1,000 in the subset. The subset runs audit the first ``S``
synthetic samples (``--max-samples``) against a real set of the first ``S`` real samples, so the planted
copies' originals are in both.

Each audit runs in a child process with the pixels extractor (784-D; free to extract, so the figures are
the audit's own reading and distance work) and reports its wall time and peak resident memory
(``getrusage(RUSAGE_SELF).ru_maxrss`` of the child). Run with one thread::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python eval/bench_audit_scale.py [--n 200000] [--subset 20000] \\
        [--work /tmp/bench-audit-scale] [--device cpu]

It also prints what the audit holds in memory for a set of 4096 x 4096 RGB images, streamed and as the
audit held it before streaming (every image of both sets stacked), computed from the sizes involved.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from synthkit.config import DataConfig
from synthkit.data.sources import load_source
from synthkit.shards import ShardSetWriter, read_manifest

DATA = DataConfig(name="fashion-mnist", size=28)
MAXCOUNT = 5000
SHOWN = ("fid", "kid_mean", "precision", "recall", "density", "coverage", "memorisation_suspects")


def _perturb(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dy, dx = rng.integers(-2, 3, size=2)
    image = np.roll(base, (dy, dx), axis=(0, 1)).astype(np.float32)
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


def real_image(train: np.ndarray, i: int) -> np.ndarray:
    return _perturb(train[i % len(train)], np.random.default_rng([1, i]))


def write_sets(work: Path, n: int, subset: int) -> tuple[Path, Path, Path]:
    """The real set, its first ``subset`` samples as a set of their own, and the synthetic set."""
    train = load_source(DATA, "train").images[:, 0].numpy()
    test = load_source(DATA, "test").images[:, 0].numpy()
    real, real_sub, syn = work / f"real-{n}", work / f"real-{subset}", work / f"synthetic-{n}"
    for out, count in ((real, n), (real_sub, subset)):
        if out.is_dir() and read_manifest(out) is not None:
            continue
        t = time.perf_counter()
        with ShardSetWriter(
            out, out.name, maxcount=MAXCOUNT, manifest_fields={"producer": {"name": "real"}}
        ) as w:
            for i in range(count):
                w.write(f"r{i:07d}", real_image(train, i)[:, :, None], {"kind": "sample", "producer": "real"})
        print(f"wrote {out.name} ({count} samples) in {time.perf_counter() - t:.0f} s (not timed below)")
    if not (syn.is_dir() and read_manifest(syn) is not None):
        t = time.perf_counter()
        fields = {"producer": {"name": "bench"}}
        with ShardSetWriter(syn, syn.name, maxcount=MAXCOUNT, manifest_fields=fields) as w:
            for i in range(n):
                rng = np.random.default_rng([2, i])
                copy = i % 1000 == 0
                image = (
                    real_image(train, (i // 1000) * 7 % subset)
                    if copy
                    else _perturb(test[i % len(test)], rng)
                )
                meta = {"kind": "sample", "producer": "bench", "condition": int(i % 10)}
                w.write(f"s{i:07d}", image[:, :, None], meta)
        print(f"wrote {syn.name} ({n} samples) in {time.perf_counter() - t:.0f} s (not timed below)")
    return real, real_sub, syn


CHILD = """
import json, resource, sys, time
from synthkit.config import AuditConfig
from synthkit.audit import audit
args = json.loads(sys.argv[1])
t = time.perf_counter()
r = audit(args["shards"], args["real"], args["out"], config=AuditConfig(**args["config"]))
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps({"wall_s": wall, "peak_rss_mib": peak, "timings": r["timings_s"],
    "metrics": {k: v["value"] for k, v in r["metrics"].items()}, "methods": r["methods"]}))
"""


def run_audit(label: str, shards: Path, real: Path, out: Path, config: dict) -> dict:
    args = {"shards": str(shards), "real": str(real), "out": str(out), "config": config}
    if out.exists():
        import shutil

        shutil.rmtree(out)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    print(f"{label}: {result['wall_s']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    return result


def memory_estimate(n: int, side: int = 4096, channels: int = 3, feature_dim: int = 2048) -> list[str]:
    """What each path holds for n x n images of side x side x channels and feature_dim-D features
    (Inception-v3's pool features; it takes the images at their size and resizes them to 299 px itself)."""
    from synthkit.audit_stream import BATCH_BYTES, batch_rows

    image = side * side * channels
    rows = batch_rows((side, side, channels), 512)
    features = 2 * n * feature_dim * 4
    # per batch: decoded arrays + one uint8 tensor (2 B per value), the float input and its /255 (8 B),
    # the 299 px resize (float, twice)
    per_batch = rows * image * 10 + rows * 3 * 299 * 299 * 4 * 2
    streamed = per_batch + features
    before = 2 * n * image + features  # every image of both sets as one uint8 stack, plus the features
    gib = 2**30
    return [
        f"{n:,} x {n:,} images of {side}x{side}x{channels} ({image / 2**20:.0f} MiB each), "
        f"{feature_dim}-D features:",
        f"  before (every image of both sets stacked): {before / gib:,.0f} GiB "
        f"(images {2 * n * image / gib:,.0f} GiB + features {features / gib:.1f} GiB)",
        f"  streamed: {streamed / gib:,.1f} GiB = features {features / gib:.1f} GiB (N x D x 4 B, both sets) "
        f"+ one batch of {rows} image(s) ({BATCH_BYTES // 2**20} MiB cap on its pixels), "
        f"{per_batch / 2**20:.0f} MiB with its float copies",
        f"  + one shard decoded by the safe reader: maxcount x {image / 2**20:.0f} MiB (write such sets with "
        f"a small maxcount: 16 -> {16 * image / gib:.1f} GiB)",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--subset", type=int, default=20_000)
    p.add_argument("--work", default="/tmp/bench-audit-scale")
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-large", action="store_true", help="only the subset runs")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    real, real_sub, syn = write_sets(work, args.n, args.subset)
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, device {args.device}")

    base = {"extractor": "pixels", "device": args.device}
    runs = {}
    if not args.skip_large:
        runs[f"approx {args.n // 1000}k"] = run_audit(
            f"approximate {args.n} x {args.n}", syn, real, work / "report-approx-large", base
        )
    sub = {**base, "max_samples": args.subset}
    runs[f"exact {args.subset // 1000}k"] = run_audit(
        f"exact {args.subset} x {args.subset}",
        syn,
        real_sub,
        work / "report-exact-sub",
        {**sub, "exact_max": 50_000},
    )
    runs[f"approx {args.subset // 1000}k"] = run_audit(
        f"approximate {args.subset} x {args.subset}",
        syn,
        real_sub,
        work / "report-approx-sub",
        {**sub, "exact_max": 1000},
    )

    names = list(runs)
    print(f"\n{'':<28}" + "".join(f"{n:>16}" for n in names))
    rows = [
        ("wall (s)", lambda r: f"{r['wall_s']:.1f}"),
        ("peak RSS (MiB)", lambda r: f"{r['peak_rss_mib']:.0f}"),
    ]
    for key in SHOWN:
        rows.append((key, lambda r, key=key: f"{r['metrics'][key]:.4g}"))
    rows.append(
        (
            "PRDC std between draws",
            lambda r: (
                "exact"
                if r["methods"]["prdc"]["exact"]
                else f"{max(r['methods']['prdc']['std'].values()):.2g} (max)"
            ),
        )
    )
    rows.append(
        (
            "ANN recall@1 syn->real",
            lambda r: (
                "exact"
                if r["methods"]["memorisation"]["exact"]
                else f"{r['methods']['memorisation']['recall_at_1']['synthetic_to_real']:.4f}"
            ),
        )
    )
    rows.append(
        (
            "ANN recall@1 real->real",
            lambda r: (
                "exact"
                if r["methods"]["memorisation"]["exact"]
                else f"{r['methods']['memorisation']['recall_at_1']['real_to_real']:.4f}"
            ),
        )
    )
    rows.append(
        (
            "suspect verdicts as exact",
            lambda r: (
                "exact"
                if r["methods"]["memorisation"]["exact"]
                else f"{r['methods']['memorisation']['suspect_agreement']:.4f}"
            ),
        )
    )
    rows.append(
        (
            "IVF nlist / nprobe",
            lambda r: (
                "-"
                if r["methods"]["memorisation"]["exact"]
                else f"{r['methods']['memorisation']['nlist']} / {r['methods']['memorisation']['nprobe']}"
            ),
        )
    )
    for label, fn in rows:
        print(f"{label:<28}" + "".join(f"{fn(runs[n]):>16}" for n in names))
    print(
        f"planted copies: {args.n // 1000} in the {args.n // 1000}k set, {args.subset // 1000} in the subset"
    )
    rows_ivf = [("PRDC sample (s)", lambda m: m["prdc"].get("seconds"))]
    for part in ("build", "search", "probe"):
        rows_ivf.append(
            (f"IVF {part} (s)", lambda m, part=part: m["memorisation"].get("seconds", {}).get(part))
        )
    for label, fn in rows_ivf:
        print(f"{label:<28}" + "".join(f"{fn(runs[n]['methods']) or '-':>16}" for n in names))
    print("\nper-step seconds:")
    steps = list(next(iter(runs.values()))["timings"])
    for s in steps:
        print(f"  {s:<26}" + "".join(f"{runs[n]['timings'].get(s, 0):>16.1f}" for n in names))
    print("\nmemory of an audit of 4096 x 4096 images (computed, not measured):")
    for n in (200_000, 1_000_000):
        print("\n".join(memory_estimate(n)))
    print(json.dumps({"n": args.n, "subset": args.subset, "runs": runs}, default=str))


if __name__ == "__main__":
    main()
