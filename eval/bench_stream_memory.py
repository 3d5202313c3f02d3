"""Peak memory of an HSG run on real data streamed from shard sets, at two data-set sizes.

Streaming keeps memory flat: conditions are fitted on a bounded sample (``conditions.fit_samples``) and
assigned per batch, the stream holds a shard at a time, and nothing keeps every image. This writes two
shard sets of synthetic 28 px gray images (``--sizes``, default 20,000 and 200,000: random blobs, since only
their number matters here), then trains the same HSG run from each for the same number of steps
(``mix.epoch_samples``), each in its own process, and reports that process's peak resident memory. For
contrast, the same run on the same images held in memory (an image folder source would decode them all).

    OMP_NUM_THREADS=1 python eval/bench_stream_memory.py [--sizes 20000 200000] [--steps 10]

``--over-time EPOCHS``: memory over a long streamed run instead. One set (the first of ``--sizes``) is
served over HTTP on 127.0.0.1 by the fault-injection server of the tests (``tests/faultserver.py``), which
resets every tenth request mid-body (``--drop-every``; 0: no faults), and a plain CL run
(``--hsg.enabled=false``) streams it for EPOCHS epochs of ``--steps`` steps, then the same run from the
local directory. The child samples its resident memory every half second; the table gives, per tenth of
the run's time, the largest RSS seen, and the growth from the second tenth (after start-up) to the last.

    OMP_NUM_THREADS=1 python eval/bench_stream_memory.py --over-time 12 --sizes 10000 --steps 20
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_set(out: Path, n: int, seed: int = 0, maxcount: int = 5000) -> float:
    from synthkit.shards import ShardSetWriter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    t = time.perf_counter()
    with ShardSetWriter(
        out, "blobs", maxcount=maxcount, manifest_fields={"producer": {"name": "bench"}}
    ) as w:
        for i in range(n):
            cy, cx = rng.uniform(6, 22, size=2)
            image = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(10, 40))
            image = np.clip(image + rng.normal(0, 15, image.shape), 0, 255).astype(np.uint8)
            w.write(f"b{i:07d}", image, {"kind": "real", "producer": "bench"})
    return time.perf_counter() - t


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child_over_time(source: str, steps: int, batch: int, run: str, epochs: int) -> None:
    """One long plain-CL run streaming ``source``; prints its RSS sampled every half second."""
    import threading

    from synthkit.config import load_pipeline
    from synthkit.training.loop import train

    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            samples.append(round(_rss_mib(), 1))

    overrides = [
        f'--mix.sources=["real={source}:1.0"]',
        f"--mix.epoch_samples={steps * batch}",
        f"--train.batch_size={batch}",
        f"--train.epochs={epochs}",
        "--train.knn_every=0",
        "--train.checkpoint_every=1000",
        "--hsg.enabled=false",
        "--data.size=28",
    ]
    cfg = load_pipeline(ROOT / "pipelines" / "tiny.yaml", overrides)
    thread = threading.Thread(target=sample, daemon=True)
    t = time.perf_counter()
    thread.start()
    res = train(cfg, Path(run), progress=False)
    done.set()
    thread.join()
    print(
        json.dumps(
            {"steps": res.summary["steps"], "seconds": round(time.perf_counter() - t, 1), "rss": samples}
        )
    )


def over_time(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from faultserver import FaultServer, Rule

    n = args.sizes[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as tmp:
        shards = Path(tmp) / "www" / "set"
        write_set(shards, n, maxcount=250)  # many shards: many requests, so many faults
        size_mib = sum(p.stat().st_size for p in shards.glob("*.tar")) / 2**20
        rules = [Rule("drop", every=args.drop_every)] if args.drop_every else []
        for where in ("http", "local"):
            with FaultServer(shards.parent, rules) as server:
                source = f"{server.url}/set" if where == "http" else str(shards)
                proc = subprocess.run(
                    [sys.executable, __file__, "--child-long", source, str(args.steps),
                     str(Path(tmp) / f"run-{where}"), str(args.over_time), "--batch", str(args.batch)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                drops = sum(r[3] == "drop" for r in server.log)
                result.update(where=where, requests=len(server.log) if where == "http" else 0, dropped=drops)
            rss = result["rss"]
            tenths = [
                max(rss[len(rss) * i // 10 : max(len(rss) * (i + 1) // 10, len(rss) * i // 10 + 1)])
                for i in range(10)
            ]
            result["tenths"] = tenths
            result["growth_mib"] = round(tenths[-1] - tenths[1], 1)
            rows.append(result)
    print(
        f"Plain CL streamed for {args.over_time} epochs x {args.steps} steps of {args.batch} from a set of "
        f"{n} images at 28 px in shards of 250 ({size_mib:.1f} MiB), 1 process, DataLoader in-process; "
        f"HTTP: every {args.drop_every}th request reset mid-body"
    )
    print(
        f"{'source':>6} {'steps':>6} {'s':>6} {'requests':>9} {'dropped':>8}  "
        "max RSS MiB per tenth of the run"
    )
    for r in rows:
        print(
            f"{r['where']:>6} {r['steps']:>6} {r['seconds']:>6} {r['requests']:>9} {r['dropped']:>8}  "
            + " ".join(f"{x:.0f}" for x in r["tenths"])
            + f"  (growth 2nd to last tenth: {r['growth_mib']:+.1f} MiB)"
        )
    print(
        json.dumps(
            {
                "bench": "stream_memory_over_time",
                "rows": [{k: v for k, v in r.items() if k != "rss"} for r in rows],
            }
        )
    )


def child(shards: str, steps: int, batch: int, run: str) -> None:
    """One training run in this process; prints its own peak RSS."""
    from synthkit.config import load_pipeline
    from synthkit.training.loop import train

    overrides = [
        f'--mix.sources=["real={shards}:1.0"]',
        f"--mix.epoch_samples={steps * batch}",
        f"--train.batch_size={batch}",
        "--train.epochs=1",
        "--train.knn_every=0",
        "--hsg.warmup_epochs=0",
        "--hsg.ramp_epochs=0",
        "--data.size=28",
        "--conditions.fit_samples=2000",
    ]
    t = time.perf_counter()
    res = train(load_pipeline(ROOT / "pipelines" / "tiny.yaml", overrides), Path(run), progress=False)
    seconds = time.perf_counter() - t
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "steps": res.summary["steps"],
                "seconds": round(seconds, 1),
                "peak_rss_mib": round(peak_kib / 1024, 1),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--over-time", type=int, metavar="EPOCHS", help="memory over a long streamed run")
    ap.add_argument("--drop-every", type=int, default=10, help="with --over-time: reset every Nth request")
    ap.add_argument("--child", nargs=3, metavar=("SHARDS", "STEPS", "RUN"), help=argparse.SUPPRESS)
    ap.add_argument("--child-long", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_long:
        source, steps, run, epochs = args.child_long
        child_over_time(source, int(steps), args.batch, run, int(epochs))
        return
    if args.over_time:
        over_time(args)
        return
    if args.child:
        child(args.child[0], int(args.child[1]), args.batch, args.child[2])
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as tmp:
        for n in args.sizes:
            shards = Path(tmp) / f"set-{n}"
            write_s = write_set(shards, n)
            size_mib = sum(p.stat().st_size for p in shards.glob("*.tar")) / 2**20
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(shards), str(args.steps),
                 str(Path(tmp) / f"run-{n}"), "--batch", str(args.batch)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(
                {"images": n, "shards_mib": round(size_mib, 1), "write_s": round(write_s, 1), **result}
            )
    print(
        f"HSG from shard sets (pipelines/tiny.yaml at 28 px, batch {args.batch}, {args.steps} steps, "
        "1 process)"
    )
    print(f"{'images':>9} {'shards MiB':>11} {'train s':>8} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['images']:>9} {r['shards_mib']:>11} {r['seconds']:>8} {r['peak_rss_mib']:>13}")
    print(json.dumps({"bench": "stream_memory", "rows": rows}))


if __name__ == "__main__":
    main()
