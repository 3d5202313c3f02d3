"""Does the audit predict the gain? Every shard set a method table's rows trained on, audited, next to the
row's paired accuracy gain over real-only (issue 16).

    python eval/audit_vs_gain.py --table eval/results/method_table_diffusion --classifier DIR \
        [--real-root /usr/share/datasets/fashion-mnist] [--out eval/results/audit_vs_gain]

For each scored run ``ROW-OBJ-all-sSEED`` of the table (not real-only) the script finds the synthetic set
the row trained on and audits it against the table's real training subset (written once as a shard set
with ``synthkit shards convert``) in one in-domain feature space (``--classifier``, a classifier from
``synthkit audit train-extractor`` or ``eval/pretrained_producer.py``):

- diffusion rows (``generator.kind: diffusion``): the run's last pool (``RUN/pools/epoch-*``, the guided
  hard samples and branched pairs of its last refresh), i.e. what the encoder saw at the end of training;
- the naive row: the pool of unguided samples it drew from, remade (``DiffusionSampler.naive_pool``: the
  same model and ``train.seed``, hence the same 1,024 images) and written as a shard set under ``--work``;
- cGAN rows would need an export (``synthkit generate``); the script says so and skips them.

The gain is paired: the row's test (and val) linear accuracy minus real-only's at the same seed. Writes
``audit_vs_gain.md`` / ``.json`` (one line per row and seed: gain, FID, KID, precision, recall, density,
coverage, memorisation suspects, mean recorded hardness) with the Spearman rank correlation of each audit
figure with the gain, and ``audit_vs_gain.png`` (each figure against the gain).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
FIGURES = (
    "fid",
    "kid_mean",
    "precision",
    "recall",
    "density",
    "coverage",
    "memorisation_suspects",
    "hardness_recorded_mean",
)


def _spearman(x: list[float], y: list[float]) -> float | None:
    """Rank correlation (average ranks for ties); None below 3 points or for a constant series."""
    if len(x) < 3:
        return None

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx) ** 0.5
    vy = sum((b - my) ** 2 for b in ry) ** 0.5
    return None if vx == 0 or vy == 0 else cov / (vx * vy)


def _synthkit(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "synthkit.cli", *args, "--json", "--no-progress"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"synthkit {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def _naive_pool(run: Path, source: Path, seed: int, work: Path) -> Path | None:
    """The naive row's pool of unguided samples (it lives only in the training process), remade from its
    diffusion model and seed and written once as a shard set; None for a cGAN's naive row (fresh samples
    every step, no set to audit)."""
    import torch

    from synthkit.images import to_uint8
    from synthkit.run_files.final import load_final
    from synthkit.shards import ShardSetWriter

    out = work / f"naive-pool-{run.name}"
    if (out / "manifest.json").exists():
        return out
    producer = load_final(str(source)).sampler
    if producer is None or not hasattr(producer, "naive_pool"):
        return None
    images = to_uint8(producer.naive_pool(seed, torch.device("cpu")))
    fields = {"producer": {"name": "naive", "run": str(source), "seed": seed}}
    with ShardSetWriter(out, f"naive-pool-{run.name}", manifest_fields=fields) as w:
        for i, image in enumerate(images):
            w.write(f"n{i:06d}", image, {"kind": "sample", "producer": "naive", "seed": seed})
    return out


def _trained_on(run: Path, work: Path) -> Path | None:
    """The synthetic set a run trained on (see the module docstring), or None."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    gen = cfg.get("generator", {})
    if gen.get("kind") == "naive":
        if gen.get("run") is None:
            return None
        return _naive_pool(run, Path(gen["run"]), int(cfg["train"]["seed"]), work)
    if gen.get("kind") == "diffusion":
        pools = sorted(p for p in (run / "pools").glob("epoch-*") if (p / "manifest.json").exists())
        return pools[-1] if pools else None
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", type=Path, required=True, help="a method_table.py --out directory")
    ap.add_argument("--classifier", type=Path, required=True, help="in-domain classifier directory")
    ap.add_argument("--real-root", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "audit_vs_gain")
    ap.add_argument(
        "--work",
        type=Path,
        default=ROOT / "runs" / "audit_vs_gain",
        help="where the real subset is converted",
    )
    args = ap.parse_args(argv)
    meta = json.loads((args.table / "table.json").read_text())["meta"]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    real = args.work / f"fashion-mnist-28px-subset-{meta['subset']}"
    if not (real / "manifest.json").exists():
        # the table's real training subset (fashion-mnist-method.yaml: subset_seed 0, 28 px)
        _synthkit(
            "shards", "convert", "--data", "fashion-mnist", "--root", args.real_root, "--size", "28",
            "--subset", str(meta["subset"]), "--out", str(real),
        )  # fmt: skip
    runs = args.table / "runs"
    scores = {
        p.name: json.loads((p / "scores.json").read_text())
        for p in sorted(runs.iterdir())
        if (p / "scores.json").exists()
    }
    lines: list[dict[str, Any]] = []
    audits: dict[str, dict[str, Any]] = {}
    for name, sc in scores.items():
        row, obj, half, seed = name.rsplit("-", 3)
        if row == "real-only":
            continue
        base = scores.get(f"real-only-{obj}-{half}-{seed}")
        syn = _trained_on(runs / name, args.work)
        if base is None or syn is None:
            print(
                f"{name}: no real-only pair or no synthetic set on disk (cGAN rows need an export); skipped"
            )
            continue
        key = str(syn.resolve())
        if key not in audits:
            report_dir = out / "audits" / name
            if (report_dir / "report.json").exists():
                audits[key] = json.loads((report_dir / "report.json").read_text())
            else:
                _synthkit(
                    "audit", str(syn), "--real", str(real), "--out", str(report_dir),
                    "--extractor", "classifier", "--classifier", str(args.classifier),
                )  # fmt: skip
                audits[key] = json.loads((report_dir / "report.json").read_text())
        m = audits[key]["metrics"]
        line = {
            "run": name,
            "row": row,
            "seed": int(seed[1:]),
            "set": str(syn),
            "samples": audits[key]["shards"]["audited"],
            "gain_test_linear": 100 * (sc["test_linear"] - base["test_linear"]),
            "gain_val_linear": 100 * (sc["val_linear"] - base["val_linear"]),
            **{f: m[f]["value"] if f in m else None for f in FIGURES},
        }
        lines.append(line)
        print(
            f"{name}: gain test {line['gain_test_linear']:+.2f} val {line['gain_val_linear']:+.2f} | "
            + ", ".join(f"{f} {line[f]:.4g}" for f in FIGURES if line[f] is not None),
            flush=True,
        )
    corr = {
        gain: {
            f: _spearman(
                [ln[f] for ln in lines if ln[f] is not None], [ln[gain] for ln in lines if ln[f] is not None]
            )
            for f in FIGURES
        }
        for gain in ("gain_test_linear", "gain_val_linear")
    }
    (out / "audit_vs_gain.json").write_text(
        json.dumps({"table": meta, "lines": lines, "spearman": corr}, indent=2)
    )
    md = [
        f"Audit vs gain: {args.table} ({meta.get('command', '')}); audits in the classifier feature space "
        f"of {args.classifier}, against the table's {meta['subset']}-image real subset. Gains are paired "
        "(row minus real-only at the same seed), linear probe, percentage points. Coverage and recall grow "
        "with the number of samples audited (a pool holds a few hundred): compare them across rows only.",
        "",
        "| run | gain test | gain val | " + " | ".join(FIGURES) + " |",
        "|---|---|---|" + "---|" * len(FIGURES),
    ]
    for ln in lines:
        cells = [f"{ln[f]:.4g}" if ln[f] is not None else "-" for f in FIGURES]
        gains = f"{ln['gain_test_linear']:+.2f} | {ln['gain_val_linear']:+.2f}"
        md.append(f"| {ln['run']} | {gains} | {' | '.join(cells)} |")
    md += ["", "Spearman rank correlation with the gain:", "", "| gain | " + " | ".join(FIGURES) + " |"]
    md.append("|---|" + "---|" * len(FIGURES))
    for gain, c in corr.items():
        md.append(f"| {gain} | " + " | ".join("-" if v is None else f"{v:+.2f}" for v in c.values()) + " |")
    (out / "audit_vs_gain.md").write_text("\n".join(md) + "\n")
    _plot(out / "audit_vs_gain.png", lines)
    print("\n".join(md))
    return 0


def _plot(path: Path, lines: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [f for f in FIGURES if any(ln[f] is not None for ln in lines)]
    fig, axes = plt.subplots(2, (len(shown) + 1) // 2, figsize=(3.2 * ((len(shown) + 1) // 2), 6.4))
    rows = sorted({ln["row"] for ln in lines})
    for ax, f in zip(axes.flat, shown, strict=False):
        for row in rows:
            pts = [(ln[f], ln["gain_test_linear"]) for ln in lines if ln["row"] == row and ln[f] is not None]
            if pts:
                ax.scatter(*zip(*pts, strict=True), label=row, s=22)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlabel(f)
        ax.set_ylabel("test linear gain (pp)")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
