"""The audit's verdict on three sets of Fashion-MNIST-sized images, in one feature space (pixels).

1. ``noise``: uniform noise, 28 x 28 x 1, conditions drawn at random;
2. ``real``: real Fashion-MNIST test images (``synthkit shards convert --split test --size 28``), audited
   against the train split: real-vs-real, which should pass every gate;
3. ``cgan`` (optional, ``--set cgan=DIR``): a synthetic set, e.g. ``synthkit generate`` from a run.

Each audit is ``synthkit audit SET --real fashion-mnist --extractor pixels`` on ``--n`` samples against
``--max-real`` training images; the verdict lines are written to ``OUT/NAME.txt`` and the top of each HTML
report is rendered in headless Chromium to ``OUT/NAME.png``.

    OMP_NUM_THREADS=1 python eval/audit_verdict.py --out eval/results/audit_verdict [--set cgan=DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = "/usr/share/datasets/fashion-mnist"
CHROMIUM = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--hide-scrollbars",
]


def _synthkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "synthkit.cli", *args], text=True, capture_output=True)


def _noise_set(out: Path, n: int) -> None:
    from synthkit.shards import ShardSetWriter

    rng = np.random.default_rng(0)
    with ShardSetWriter(out, "noise", manifest_fields={"producer": {"name": "uniform-noise"}}) as w:
        for i in range(n):
            meta = {
                "kind": "sample",
                "producer": "uniform-noise",
                "condition": int(rng.integers(10)),
                "condition_k": 10,
            }
            w.write(f"noise_{i:06d}", rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), meta)


def _screenshot(html: Path, png: Path, work: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium not found: no screenshot", file=sys.stderr)
        return
    home = work / "chromium-home"
    subprocess.run(
        [chromium, *CHROMIUM, f"--user-data-dir={home}", "--window-size=1200,1100", f"--screenshot={png}",
         html.resolve().as_uri()],
        check=True, capture_output=True, timeout=180, env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/audit-verdict"), help="sets and reports")
    ap.add_argument("--n", type=int, default=2000, help="samples audited per set")
    ap.add_argument("--max-real", type=int, default=10000, help="real training images")
    ap.add_argument("--set", action="append", default=[], help="NAME=DIR: a synthetic set to audit too")
    ap.add_argument("--only", action="append", default=[], help="audit only these sets; the others stay")
    ap.add_argument(
        "--classifier", help="audit in this classifier's space (audit train-extractor), not pixels"
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    sets = {"noise": args.work / "noise", "real": args.work / "fashion-mnist-test"}
    if not (sets["noise"] / "manifest.json").exists():
        _noise_set(sets["noise"], args.n)
    if not (sets["real"] / "manifest.json").exists():
        done = _synthkit("shards", "convert", "--data", "fashion-mnist", "--root", ROOT, "--split", "test",
                         "--size", "28", "--out", str(sets["real"]), "--no-progress")  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(done.stderr)
    for spec in args.set:
        name, _, where = spec.partition("=")
        sets[name] = Path(where)
    saved = args.out / "summary.json"
    summary = json.loads(saved.read_text()) if saved.exists() else {}
    for name, where in sets.items():
        if args.only and name not in args.only:
            continue
        tag = f"{name}-classifier" if args.classifier else name
        report = args.work / f"audit-{tag}"
        shutil.rmtree(report, ignore_errors=True)
        start = time.perf_counter()
        cmd = [
            "audit", str(where), "--real", "fashion-mnist",
            *(["--classifier", args.classifier] if args.classifier else ["--extractor", "pixels"]),
            "--max-samples", str(args.n), "--max-real", str(args.max_real), "--fail-on", "fail",
        ]  # fmt: skip
        done = _synthkit(*cmd, "--root", ROOT, "--out", str(report), "--no-progress")
        seconds = time.perf_counter() - start
        if done.returncode not in (0, 1):
            raise SystemExit(done.stderr)
        last = done.stderr.splitlines()[-1] + "\n" if done.returncode else ""
        text = f"$ synthkit {' '.join(cmd)}\n{done.stdout}{last}exit {done.returncode}, {seconds:.0f} s\n"
        (args.out / f"{tag}.txt").write_text(text)
        print(text)
        _screenshot(report / "report.html", args.out / f"{tag}.png", args.work)
        verdict = json.loads((report / "report.json").read_text())["verdict"]
        summary[tag] = {"status": verdict["status"], "exit": done.returncode,
                         "gates": {g["name"]: g["status"] for g in verdict["gates"]}}  # fmt: skip
    saved.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
