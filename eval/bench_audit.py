"""Time and peak memory of ``synthkit audit`` on 50,000 samples against 50,000 real images.

The synthetic set is written as shards first (not timed): perturbed copies of the Fashion-MNIST *test* images
(random shifts of up to 2 px and Gaussian pixel noise, 5 per image), so it looks like a generator's output
and holds no copies of the training images. The real side is a seeded 50,000-image subset of the Fashion-MNIST
*train* split, read through ``load_source``. The audit then runs in a child process, so its peak resident
memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``) is the audit's alone: reading both sets, features of all
100,000 images, FID, KID (100 subsets of 1,000), precision/recall/density/coverage with k=5 and memorisation
(50,000 x 50,000 distances in chunked blocks, three passes), uniformity, class coverage, broken images,
conditions, and the HTML report.

    python eval/bench_audit.py [--classifier DIR] [--n 50000] [--work /tmp/bench-audit] [--chunk-size 4096]

Without ``--classifier`` the feature extractor is the in-domain classifier architecture with random weights
(same cost as a trained one; its scores mean nothing, the timings do).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from synthkit.config import DataConfig
from synthkit.data.sources import load_source
from synthkit.shards import ShardSetWriter, read_manifest

DATA = DataConfig(name="fashion-mnist", size=28)


def write_synthetic(out: Path, n: int, seed: int = 0) -> None:
    test = load_source(DATA, "test").images[:, 0].numpy()  # N x 28 x 28
    rng = np.random.default_rng(seed)
    with ShardSetWriter(out, "bench", maxcount=5000, manifest_fields={"producer": {"name": "bench"}}) as w:
        for i in range(n):
            base = test[i % len(test)]
            dy, dx = rng.integers(-2, 3, size=2)
            image = np.roll(base, (dy, dx), axis=(0, 1)).astype(np.float32)
            image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
            meta = {
                "kind": "sample",
                "producer": "bench",
                "condition": int(i % 10),
                "hardness": float(rng.random()),
            }
            w.write(f"s{i:06d}", image[:, :, None], meta)


def random_classifier(out: Path) -> Path:
    """An untrained classifier extractor directory (same architecture and cost as a trained one)."""
    from safetensors.torch import save_file

    from synthkit.metrics.extractors import (
        CLASSIFIER_FORMAT,
        CLASSIFIER_META,
        CLASSIFIER_WEIGHTS,
        DomainClassifier,
    )
    from synthkit.provenance import sha256_file, state_dict_hash

    if (out / CLASSIFIER_META).exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in DomainClassifier(1, 10, 32).state_dict().items()}
    save_file(state, str(out / CLASSIFIER_WEIGHTS))
    meta = {
        "format": CLASSIFIER_FORMAT,
        "version": 1,
        "sha256": state_dict_hash(state),
        "file_sha256": sha256_file(out / CLASSIFIER_WEIGHTS),
        "data": {"name": "untrained"},
        "size": 28,
        "channels": 1,
        "num_classes": 10,
        "classes": None,
        "width": 32,
        "test_accuracy": None,
    }
    (out / CLASSIFIER_META).write_text(json.dumps(meta, indent=2))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--classifier", help="a classifier from `synthkit audit train-extractor` (default: untrained)"
    )
    p.add_argument("--n", type=int, default=50_000, help="synthetic samples and real images (default 50,000)")
    p.add_argument("--work", default="/tmp/bench-audit", help="where the synthetic set and reports go")
    p.add_argument("--chunk-size", type=int, default=4096)
    args = p.parse_args()

    work = Path(args.work)
    shards = work / f"synthetic-{args.n}"
    if read_manifest(shards) is None if shards.is_dir() else True:
        t = time.perf_counter()
        write_synthetic(shards, args.n)
        print(
            f"wrote {args.n} synthetic samples in {time.perf_counter() - t:.0f} s (not timed below)",
            flush=True,
        )
    classifier = (
        Path(args.classifier) if args.classifier else random_classifier(work / "untrained-classifier")
    )
    out = work / f"report-{args.n}"

    child = (
        "import json, sys; from synthkit.audit import audit; from synthkit.config import AuditConfig; "
        f"r = audit({str(shards)!r}, 'fashion-mnist', {str(out)!r}, classifier={str(classifier)!r}, "
        f"config=AuditConfig(extractor='classifier', max_real={args.n}, chunk_size={args.chunk_size}), "
        "progress=True); "
        "print('RESULT ' + json.dumps({'timings': r['timings_s'], "
        "'metrics': {k: v['value'] for k, v in r['metrics'].items()}}))"
    )
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    print(proc.stdout.replace(proc.stdout.splitlines()[-1], "").rstrip())
    print(f"\naudit of {args.n} synthetic vs {args.n} real (Fashion-MNIST 28x28, classifier features)")
    print(f"{'step':<20} {'seconds':>8}")
    for step, seconds in result["timings"].items():
        print(f"{step:<20} {seconds:>8.1f}")
    print(f"{'total (process)':<20} {wall:>8.1f}")
    print(f"peak resident memory: {peak_mib:.0f} MiB")
    print(json.dumps({"n": args.n, "wall_s": round(wall, 1), "peak_rss_mib": round(peak_mib), **result}))


if __name__ == "__main__":
    main()
