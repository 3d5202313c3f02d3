"""Throughput of ``synthkit generate`` against raw generator sampling, in one process, same batch size.

The export does much more than sample G: it scores every chunk's hardness under the encoder (two augmented
views of the chunk plus a reference batch of real images), encodes PNGs, writes tar shards and fsyncs them and
the resume journal. This measures what that costs per image, so that a slow export can be told apart from a
slow generator. It also times the resume of an export interrupted halfway, which replays the seeded draws of
the kept samples, re-hashes and reads back the kept shards, and generates the rest.

    python eval/bench_export.py [--run RUN_DIR] [--n 5000] [--batch-size B]

Without ``--run`` it first trains a tiny HSG run on the embedded digits (the test suite's tiny settings,
2 epochs, a few seconds), so the figures describe that tiny generator; pass a real run for real figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from synthkit.config import load_pipeline
from synthkit.export import generate
from synthkit.shards import ShardSetWriter
from synthkit.training.artifacts import load_final
from synthkit.training.loop import train

TINY_PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.yaml"


@torch.no_grad()
def raw_sampling_seconds(run: Path, n: int, batch_size: int, seed: int) -> float:
    """Seconds to draw ``n`` images from the run's generator: z and conditions as the export draws them."""
    art = load_final(run)
    gen, cond = art.generator, art.conditions
    assert gen is not None
    g = torch.Generator().manual_seed(seed)

    def sample(count: int) -> None:
        for start in range(0, count, batch_size):
            m = min(batch_size, count - start)
            z = torch.randn(m, gen.z_dim, generator=g)
            c = cond.sample(m, generator=g) if cond is not None and cond.num_classes else None
            gen(z, c)

    sample(batch_size * 3)  # warm-up: allocator, kernels
    t = time.perf_counter()
    sample(n)
    return time.perf_counter() - t


class _Interrupt(Exception):
    pass


def interrupted_export(run: Path, out: Path, n: int, batch_size: int, seed: int, maxcount: int) -> int:
    """Run an export and stop it after about half its samples, as a crash would; returns samples written."""
    real_write = ShardSetWriter.write
    stop_at = n // 2
    written = 0

    def write(self: ShardSetWriter, *args, **kwargs) -> None:
        nonlocal written
        if written >= stop_at:
            raise _Interrupt
        written += 1
        real_write(self, *args, **kwargs)

    ShardSetWriter.write = write  # type: ignore[method-assign]
    try:
        generate(run, out, n=n, seed=seed, batch_size=batch_size, maxcount=maxcount, progress=False)
    except _Interrupt:
        pass
    finally:
        ShardSetWriter.write = real_write  # type: ignore[method-assign]
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a finished HSG run (default: train a tiny one on digits)")
    ap.add_argument("--n", type=int, default=5000, help="images per measurement (default 5000)")
    ap.add_argument(
        "--batch-size", type=int, help="chunk size of both (default: the run's export.batch_size)"
    )
    ap.add_argument("--maxcount", type=int, default=1000, help="samples per shard (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="raw-sampling repeats; the median is kept")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        work = Path(tmp)
        run = args.run
        if run is None:
            run = work / "run"
            t = time.perf_counter()
            train(load_pipeline(TINY_PIPELINE), run, progress=False)
            print(f"trained a tiny HSG run on digits in {time.perf_counter() - t:.1f} s")
        art = load_final(run)
        if art.generator is None:
            raise SystemExit(f"{run} has no generator (trained with hsg.enabled=false)")
        batch = args.batch_size or art.cfg.export.batch_size

        raw_s = statistics.median(
            raw_sampling_seconds(run, args.n, batch, args.seed) for _ in range(args.repeats)
        )
        t = time.perf_counter()
        res = generate(
            run,
            work / "full",
            n=args.n,
            seed=args.seed,
            batch_size=batch,
            maxcount=args.maxcount,
            progress=False,
        )
        export_s = time.perf_counter() - t
        assert res.manifest["total"] == args.n

        kept = interrupted_export(run, work / "half", args.n, batch, args.seed, args.maxcount)
        t = time.perf_counter()
        resumed = generate(
            run,
            work / "half",
            n=args.n,
            seed=args.seed,
            batch_size=batch,
            maxcount=args.maxcount,
            progress=False,
        )
        resume_s = time.perf_counter() - t
        identical = all(
            (work / "half" / s["name"]).read_bytes() == (work / "full" / s["name"]).read_bytes()
            for s in res.manifest["shards"]
        )

    raw_rate, export_rate = args.n / raw_s, args.n / export_s
    c, h, w = art.generator.channels, art.generator.size, art.generator.size
    print(
        f"data {art.cfg.data.name}, images {c}x{h}x{w}, n={args.n}, batch {batch}, "
        f"{torch.get_num_threads()} torch threads, CPU"
    )
    print(f"raw sampling (G forward only, no_grad):          {raw_rate:9.1f} img/s  ({raw_s:.2f} s)")
    print(f"full export (G + hardness + PNG + tar + fsync):  {export_rate:9.1f} img/s  ({export_s:.2f} s)")
    print(f"ratio export/raw: {export_rate / raw_rate:.3f} (export is {raw_rate / export_rate:.1f}x slower)")
    print(
        f"resume after an interruption at {resumed.resumed_from}/{args.n} durable samples "
        f"({kept} written): {resume_s:.2f} s, {resume_s / export_s:.2f} of a full export; "
        f"byte-identical: {identical}"
    )
    print(
        json.dumps(
            {
                "bench": "export",
                "data": art.cfg.data.name,
                "image": [c, h, w],
                "n": args.n,
                "batch_size": batch,
                "maxcount": args.maxcount,
                "threads": torch.get_num_threads(),
                "raw_img_per_s": round(raw_rate, 1),
                "export_img_per_s": round(export_rate, 1),
                "ratio_export_over_raw": round(export_rate / raw_rate, 4),
                "resume_from": resumed.resumed_from,
                "resume_s": round(resume_s, 3),
                "export_s": round(export_s, 3),
                "resume_identical": identical,
            }
        )
    )


if __name__ == "__main__":
    main()
