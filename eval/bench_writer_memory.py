"""Memory a shard writer holds for the metadata tables, as the set grows.

The writer keeps each finished shard's table until it publishes the set (tables, then the manifest). This
writes ``--n`` tiny samples (8 x 8 gray, the metadata of a hard synthetic sample: kind, producer, hardness,
condition, step, seed) in shards of ``--maxcount`` and reports the Python heap's peak (``tracemalloc``: the
rows and table bytes are Python objects; the images are tiny so that the tables dominate) and the process's
peak RSS, at two sizes, each in its own process. Run it against another checkout's package to compare::

    OMP_NUM_THREADS=1 python eval/bench_writer_memory.py [--sizes 20000 200000] [--maxcount 1000]
    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/other/checkout python eval/bench_writer_memory.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def child(n: int, maxcount: int, out: Path) -> dict[str, float]:
    import synthkit
    from synthkit.shards import ShardSetWriter

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 8, 8), dtype=np.uint8)
    tracemalloc.start()
    t = time.perf_counter()
    with ShardSetWriter(
        out, "bench", maxcount=maxcount, manifest_fields={"producer": {"name": "bench"}}
    ) as w:
        for i in range(n):
            meta = {
                "kind": "hard",
                "producer": "bench",
                "hardness": float(rng.random()),
                "condition": int(i % 10),
                "step": i // 256,
                "seed": 0,
            }
            w.write(f"s{i:08d}", images[i % 64], meta, cls=i % 10)
        _, before_close = tracemalloc.get_traced_memory()
    _, peak = tracemalloc.get_traced_memory()
    seconds = time.perf_counter() - t
    tracemalloc.stop()
    return {
        "n": n,
        "package": str(Path(synthkit.__file__).parent),
        "heap_peak_mib_before_close": before_close / 2**20,
        "heap_peak_mib": peak / 2**20,
        "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": seconds,
        "table_bytes": sum(p.stat().st_size for p in (out / "metadata").iterdir()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 200000])
    ap.add_argument("--maxcount", type=int, default=1000, help="samples per shard (the writer's default)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.maxcount, args.out)))
        return 0
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, __file__, "--child", str(n), "--maxcount", str(args.maxcount)]
            done = subprocess.run([*cmd, "--out", str(Path(tmp) / "set")], capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            rows.append(json.loads(done.stdout.splitlines()[-1]))
    print(f"package: {rows[0]['package']}")
    print(
        "| samples | heap peak while writing (MiB) | heap peak incl. close (MiB) | peak RSS (MiB) "
        "| tables (MiB) | s |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['heap_peak_mib_before_close']:.1f} | {r['heap_peak_mib']:.1f} | "
            f"{r['rss_peak_mib']:.0f} | {r['table_bytes'] / 2**20:.2f} | {r['seconds']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
