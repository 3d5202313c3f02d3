"""Decoded images per second: synthkit's shard stream against an ImageFolder of PNGs and an in-memory tensor.

The safe reader parses tar headers and decodes PNGs in Python, so it costs more per image than reading a
tensor from memory; this measures by how much, on real data, next to the layout most users would otherwise
use (one PNG file per image, torchvision ``ImageFolder``). The same 20,000 Fashion-MNIST training images
(28x28 gray, ``data.subset=20000`` so that ``convert_source`` writes exactly them) are read as:

* shards: ``convert_source`` -> ``MixedShardStream`` (one source, weight 1) -> DataLoader with
  ``collate_images`` (uint8 N x 1 x 28 x 28);
* ImageFolder: class subfolders of PNG files -> ``ImageFolder`` with ``PILToTensor`` (loaded as mode L,
  so the tensors match) -> DataLoader;
* in memory: ``TensorDataset`` over the uint8 tensor -> DataLoader.

Each loader runs whole epochs of batch 256 with ``num_workers`` 0 and 2 (in memory: 0); the best of
``--repeats`` epochs is reported, worker start-up included. All files are freshly written, so they are in
the page cache: this measures decoding, not the disk.

    OMP_NUM_THREADS=1 python eval/bench_reader.py [--n 20000] [--repeats 2] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from synthkit.config import DataConfig
from synthkit.data.sources import load_source
from synthkit.shards.convert import convert_source
from synthkit.shards.mix import MixedShardStream, MixSource, collate_images


def _gray_loader(path: str) -> Image.Image:
    """ImageFolder's default loader converts to RGB; gray keeps the tensors equal to the other two paths."""
    with open(path, "rb") as f:
        return Image.open(f).convert("L")


def _write_image_folder(images: torch.Tensor, labels: torch.Tensor, root: Path) -> None:
    for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        folder = root / f"{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"{i:06d}.png", compress_level=6)


def _cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (DataLoader workers are joined after an epoch)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _epoch(loader: Iterable) -> tuple[float, float, int]:
    """Wall seconds and CPU seconds for one full pass, and the number of images it yielded."""
    wall, cpu, n = time.perf_counter(), _cpu_seconds(), 0
    for batch in loader:
        n += batch[0].shape[0]
    return time.perf_counter() - wall, _cpu_seconds() - cpu, n


def _best(loader_factory: Callable[[], Iterable], repeats: int, expect: int) -> tuple[float, float]:
    """Images per second and CPU microseconds per image of the fastest of ``repeats`` epochs.

    CPU time per image is the figure to compare on a shared machine: wall-clock rates with workers depend on
    how many cores other jobs leave free.
    """
    best = (0.0, 0.0)
    for _ in range(repeats):
        wall, cpu, n = _epoch(loader_factory())  # a fresh loader each epoch, as in training
        if n != expect:
            raise RuntimeError(f"loader yielded {n} images, expected {expect}")
        if n / wall > best[0]:
            best = (n / wall, cpu / n * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="images (a fixed subset of the training split)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    args = ap.parse_args()

    cfg = DataConfig(name="fashion-mnist", size=28, subset=args.n)
    data = load_source(cfg, "train")
    assert data.labels is not None
    with tempfile.TemporaryDirectory(prefix="bench_reader_") as tmp:
        # 1. The three layouts of the same images.
        t0 = time.perf_counter()
        manifest = convert_source(cfg, "train", Path(tmp) / "shards", maxcount=args.maxcount)
        t_convert = time.perf_counter() - t0
        t0 = time.perf_counter()
        _write_image_folder(data.images, data.labels, Path(tmp) / "folder")
        t_folder = time.perf_counter() - t0
        mb_shards = sum(s["bytes"] for s in manifest["shards"]) / 1e6
        mb_folder = sum(p.stat().st_size for p in (Path(tmp) / "folder").rglob("*.png")) / 1e6
        print(
            f"{args.n} images: convert_source {t_convert:.1f}s ({len(manifest['shards'])} shards, "
            f"{mb_shards:.1f} MB); ImageFolder write {t_folder:.1f}s ({mb_folder:.1f} MB of PNG files)"
        )

        # 2. Each reader, timed over whole epochs.
        source = MixSource("real", Path(tmp) / "shards", 1.0)
        folder = ImageFolder(
            str(Path(tmp) / "folder"), transform=transforms.PILToTensor(), loader=_gray_loader
        )
        memory = TensorDataset(data.images, data.labels)
        rows: list[tuple[str, int, tuple[float, float]]] = []
        for workers in args.workers:
            stream = MixedShardStream([source], seed=0, epoch_samples=args.n)
            expect = stream.samples_per_rank(workers)

            def stream_loader(s: MixedShardStream = stream, w: int = workers) -> DataLoader:
                return DataLoader(s, batch_size=args.batch, num_workers=w, collate_fn=collate_images)

            def folder_loader(w: int = workers) -> DataLoader:
                return DataLoader(folder, batch_size=args.batch, num_workers=w)

            rows.append(("shards", workers, _best(stream_loader, args.repeats, expect)))
            rows.append(("imagefolder", workers, _best(folder_loader, args.repeats, args.n)))
        rows.append(
            ("in-memory", 0, _best(lambda: DataLoader(memory, batch_size=args.batch), args.repeats, args.n))
        )

    # 3. Report.
    rate = {(name, w): r[0] for name, w, r in rows}
    print(f"\n{'reader':<12} {'workers':>7} {'images/s':>10} {'CPU us/image':>13}")
    for name, workers, (r, us) in rows:
        print(f"{name:<12} {workers:>7} {r:>10.0f} {us:>13.0f}")
    ratios = {}
    for workers in args.workers:
        ratios[f"shards/imagefolder@{workers}"] = rate["shards", workers] / rate["imagefolder", workers]
        ratios[f"shards@{workers}/in-memory@0"] = rate["shards", workers] / rate["in-memory", 0]
    print()
    for label, value in ratios.items():
        print(f"{label:<28} {value:6.3f}x")
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs (wall-clock rates with workers need free cores)")
    record = {
        "bench": "reader",
        "n": args.n,
        "batch": args.batch,
        "maxcount": args.maxcount,
        "images_per_s": {f"{name}@{w}": round(r[0], 1) for name, w, r in rows},
        "cpu_us_per_image": {f"{name}@{w}": round(r[1], 1) for name, w, r in rows},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(load, 2),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
