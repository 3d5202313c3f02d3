"""Throughput of ``synthkit generate`` and where its time goes, for a cGAN and a diffusion run.

The export does much more than sample the generator: it scores every chunk's hardness under the run's
encoder and objective (two augmented views of the chunk, next to a reference batch of real images whose
views and projections are computed once per export, in the first chunk's scoring time), encodes
PNGs, writes tar shards and fsyncs them and the resume journal. This splits one export's wall time into

* ``sampling``: ``sampler.make`` (the cGAN's EMA generator; the diffusion model's DDIM steps, with encoder
  guidance for hard samples and branching for pairs);
* ``scoring``: hardness (and, for pairs, pair similarity) under the encoder (``objectives/scoring.py``);
* ``png``: PNG encoding of every image;
* ``tar+fsync``: the rest of the shard writer (tar members, metadata JSON, fsync of shards and journal,
  renames, the manifest);
* ``other``: what is left (reading the run and the real reference batch, uint8 conversion, the preview).

It also times the resume of an export interrupted halfway (the kept shards are re-hashed and read back, the
rest is made). The stages are timed by wrapping the functions that do them, in this process only.

    OMP_NUM_THREADS=1 python eval/bench_export.py [--producers cgan diffusion] [--n 2000] [--run RUN_DIR]

Without ``--run`` it trains the test suite's tiny runs (``pipelines/tiny.yaml`` and ``tiny-diffusion.yaml``,
a few seconds each) on the embedded digits, so the figures describe those tiny generators; pass a real run
(one producer) for real figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from synthkit.config import load_pipeline
from synthkit.export import generate
from synthkit.objectives.scoring import Scorer
from synthkit.run_files.final import load_final
from synthkit.shards import ShardSetWriter
from synthkit.shards import writer as shard_writer
from synthkit.training.loop import train

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
TINY = {"cgan": PIPELINES / "tiny.yaml", "diffusion": PIPELINES / "tiny-diffusion.yaml"}


class _Timers:
    """Wall time spent inside wrapped callables, by stage; nested calls count once (the outer stage)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth = 0

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t
                self._depth -= 1

        return timed


def _timed_export(run: Path, out: Path, **request: Any) -> tuple[float, dict[str, float], Any]:
    art = load_final(run)
    timers = _Timers()
    originals = {
        "make": type(art.sampler).make,
        "hardness": Scorer.hardness,
        "pair_similarity": Scorer.pair_similarity,
        "png": shard_writer._encode_png,
        "write": ShardSetWriter.write,
        "close": ShardSetWriter.close,
    }

    def write(self: ShardSetWriter, *a: Any, **k: Any) -> None:
        t, png_before = time.perf_counter(), timers.seconds["png"]
        originals["write"](self, *a, **k)
        # the PNG encoding inside write counts as png, the rest of it as tar+fsync
        timers.seconds["tar+fsync"] += time.perf_counter() - t - (timers.seconds["png"] - png_before)

    type(art.sampler).make = timers.wrap("sampling", originals["make"])  # type: ignore[method-assign]
    Scorer.hardness = timers.wrap("scoring", originals["hardness"])  # type: ignore[method-assign]
    Scorer.pair_similarity = timers.wrap("scoring", originals["pair_similarity"])  # type: ignore[method-assign]
    shard_writer._encode_png = timers.wrap("png", originals["png"])
    ShardSetWriter.write = write  # type: ignore[method-assign]
    ShardSetWriter.close = timers.wrap("tar+fsync", originals["close"])  # type: ignore[method-assign]
    try:
        t = time.perf_counter()
        res = generate(run, out, progress=False, **request)
        total = time.perf_counter() - t
    finally:
        type(art.sampler).make = originals["make"]  # type: ignore[method-assign]
        Scorer.hardness, Scorer.pair_similarity = originals["hardness"], originals["pair_similarity"]  # type: ignore[method-assign]
        shard_writer._encode_png = originals["png"]
        ShardSetWriter.write, ShardSetWriter.close = originals["write"], originals["close"]  # type: ignore[method-assign]
    split = dict(timers.seconds)
    split["other"] = total - sum(split.values())
    return total, split, res


class _Interrupt(Exception):
    pass


def _interrupted(run: Path, out: Path, n_samples: int, **request: Any) -> int:
    """Start an export and stop it after about half its samples, as a crash would; returns samples written."""
    real_write, written = ShardSetWriter.write, [0]

    def write(self: ShardSetWriter, *args: Any, **kwargs: Any) -> None:
        if written[0] >= n_samples // 2:
            raise _Interrupt
        written[0] += 1
        real_write(self, *args, **kwargs)

    ShardSetWriter.write = write  # type: ignore[method-assign]
    try:
        generate(run, out, progress=False, **request)
    except _Interrupt:
        pass
    finally:
        ShardSetWriter.write = real_write  # type: ignore[method-assign]
    return written[0]


def bench(kind: str, run: Path, work: Path, n: int, batch: int | None, maxcount: int, seed: int) -> dict:
    art = load_final(run)
    request = {"n": n, "seed": seed, "maxcount": maxcount, "batch_size": batch or art.cfg.export.batch_size}
    total, split, res = _timed_export(run, work / f"{kind}-full", **request)
    samples = res.manifest["total"]
    kept = _interrupted(run, work / f"{kind}-half", samples, **request)
    t = time.perf_counter()
    resumed = generate(run, work / f"{kind}-half", progress=False, **request)
    resume_s = time.perf_counter() - t
    identical = [s["sha256"] for s in resumed.manifest["shards"]] == [
        s["sha256"] for s in res.manifest["shards"]
    ]
    cfg = art.cfg
    return {
        "bench": "export",
        "producer": kind,
        "data": cfg.data.name,
        "samples": samples,
        "kinds": res.manifest["producer"]["kind"],
        "batch_size": request["batch_size"],
        "maxcount": maxcount,
        "threads": torch.get_num_threads(),
        "export_s": round(total, 3),
        "export_img_per_s": round(samples / total, 1),
        "split_s": {k: round(v, 3) for k, v in split.items()},
        "split_us_per_img": {k: round(1e6 * v / samples, 1) for k, v in split.items()},
        "resume_from": resumed.resumed_from,
        "resume_written_before_kill": kept,
        "resume_s": round(resume_s, 3),
        "resume_identical": identical,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--producers", nargs="+", default=["cgan", "diffusion"], choices=sorted(TINY))
    ap.add_argument("--run", type=Path, help="a finished run (one producer; default: train the tiny ones)")
    ap.add_argument("--n", type=int, default=2000, help="samples per kind (default 2000)")
    ap.add_argument("--batch-size", type=int, help="chunk size (default: the run's export.batch_size)")
    ap.add_argument("--maxcount", type=int, default=1000, help="samples per shard (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        work = Path(tmp)
        for kind in args.producers:
            run = args.run
            if run is None:
                run = work / f"run-{kind}"
                t = time.perf_counter()
                train(load_pipeline(TINY[kind]), run, progress=False)
                print(f"trained the tiny {kind} run in {time.perf_counter() - t:.1f} s")
            results.append(bench(kind, run, work, args.n, args.batch_size, args.maxcount, args.seed))
    for r in results:
        print(
            f"\n{r['producer']}: {r['samples']} samples ({r['kinds']}), batch {r['batch_size']}, "
            f"{r['threads']} torch threads: {r['export_img_per_s']} img/s ({r['export_s']} s)"
        )
        print(f"  {'stage':<10} {'s':>8} {'us/img':>9} {'share':>7}")
        for stage, s in r["split_s"].items():
            share = s / r["export_s"]
            print(f"  {stage:<10} {s:8.3f} {r['split_us_per_img'][stage]:9.1f} {share:7.1%}")
        print(
            f"  resume after a kill at {r['resume_written_before_kill']} written "
            f"({r['resume_from']} durable): {r['resume_s']} s, byte-identical: {r['resume_identical']}"
        )
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
