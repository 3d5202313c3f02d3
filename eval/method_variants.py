"""Tabulate the method-table variants tried (each a ``method_table.py --out DIR --set ...`` run) against
real-only at the same epochs and seeds.

    python eval/method_variants.py [--variants eval/results/method_table-variants]
                                   [--reference eval/results/method_table] [--out .../variants.md]

The reference table's own rows come first (the defaults), then every variant's. For every row it reports val
and test accuracy (mean +- std over seeds) and the paired difference to real-only: per seed, variant minus
real-only at that seed (same real data, epochs and seed), then mean +- std of those differences. The real-
only runs are the variant directory's own when it has them, otherwise the first other table's (the
reference first) with the same epochs and subset.
Settings are compared on val; test is reported, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("val_linear", "val_knn", "test_linear", "test_knn")


def _load(table_dir: Path) -> dict[str, Any] | None:
    path = table_dir / "table.json"
    return json.loads(path.read_text()) if path.exists() else None


def _real_only(tables: list[dict[str, Any]], objective: str, epochs: int, subset: int) -> dict[int, dict]:
    """Per-seed scores of real-only (all the real subset) at these epochs and subset, from the first table
    that has them."""
    for t in tables:
        meta = t["meta"]
        if meta["epochs"] != epochs or meta["subset"] != subset:
            continue
        for row in t["rows"]:
            if row["row"] == "real-only" and row["objective"] == objective and not row["half"]:
                return dict(zip(meta["seeds"], row["per_seed"], strict=False))
    return {}


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} +- {100 * std:.2f}"


def tabulate(variants: Path, reference: Path) -> str:
    lines = [
        "| variant | overrides | row | objective | seeds | val linear | val kNN | test linear | test kNN | "
        "val linear - real-only (paired) | test linear - real-only (paired) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    dirs = [reference] + sorted(p for p in variants.iterdir() if p.is_dir())
    every = [t for t in map(_load, dirs) if t is not None]
    for d in dirs:
        t = _load(d)
        if t is None:
            continue
        meta = t["meta"]
        overrides = [o.removeprefix("--") for o in meta["overrides"]]
        if meta.get("pretrain_steps"):
            overrides.append(f"pretrain {meta['pretrain_steps']} GAN steps")
        if meta.get("producer") == "diffusion":
            overrides.append(f"diffusion producer, {meta.get('unet_steps')} UNet steps per seed")
        for row in t["rows"]:
            if row["half"]:
                continue
            base = _real_only([t, *every], row["objective"], meta["epochs"], meta["subset"])
            seeds = meta["seeds"][: len(row["per_seed"])]
            per_seed = dict(zip(seeds, row["per_seed"], strict=False))
            cells = [_fmt([s[k] for s in row["per_seed"]]) for k in KEYS]
            diffs = []
            for key in ("val_linear", "test_linear"):
                paired = [per_seed[s][key] - base[s][key] for s in per_seed if s in base]
                diffs.append(_fmt(paired) if row["row"] != "real-only" else "-")
            name = f"{d.name} (defaults)" if d == reference else d.name
            lines.append(
                f"| {name} | {' '.join(overrides)} | {row['row']} | {row['objective']} | {len(seeds)} | "
                + " | ".join(cells + diffs)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", type=Path, default=ROOT / "eval" / "results" / "method_table-variants")
    ap.add_argument("--reference", type=Path, default=ROOT / "eval" / "results" / "method_table")
    ap.add_argument("--out", type=Path, default=None, help="default: VARIANTS/variants.md")
    args = ap.parse_args(argv)
    md = tabulate(args.variants, args.reference)
    out = args.out or args.variants / "variants.md"
    out.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
