"""Decoded images per second and CPU per image: synthkit's shard stream against its peers, and decoding alone.

The same 20,000 Fashion-MNIST training images (28x28 gray, ``data.subset=20000``, so that
``convert_source`` writes exactly them) are read, in whole epochs of batch 256, as:

* ``synthkit``: ``convert_source`` shards -> ``MixedShardStream`` (one source, weight 1) -> DataLoader with
  ``collate_images`` (uint8 N x 1 x 28 x 28): the path ``train --data`` trains from, every check of
  ``synthkit.shards.reader`` on, the sha256 of each shard included;
* ``synthkit-nohash``: the same with the sha256 check off (``check_hash=False``, for this measurement only),
  so the cost of the hash is the difference of the two rows;
* ``webdataset``: plain ``webdataset.WebDataset`` over the same shard files, ``.decode("l8")`` (PIL), as a
  peer: no hash, no schema, and it would unpickle a ``pyd`` member;
* ``imagefolder``: class subfolders of PNG files -> ``ImageFolder`` with ``PILToTensor`` (loaded as mode L,
  so the tensors match) -> DataLoader;
* ``in-memory``: ``TensorDataset`` over the uint8 tensor -> DataLoader (the ceiling).

and decoding alone, over the PNG bytes already in memory (no tar, no JSON, no batching), one call per
image: ``decode:torchvision`` (``torchvision.io.decode_png``; ``-op``: its libpng op called directly,
without the wrapper's per-call deprecation warning in torchvision 0.29), ``decode:pil`` (``Image.open`` +
``np.asarray``) and ``decode:synthkit`` (the reader's own checked decoder: chunk and CRC checks, exact
inflate, unfiltering into one array per shard).

Loaders run with ``num_workers`` 0 and 2; the best of ``--repeats`` epochs is reported (highest images/s,
lowest CPU per image), worker start-up included. CPU time is this process's plus its reaped children's
(the workers), per image. All files are freshly written, so they are in the page cache: this measures
decoding, not the disk. Run it with
``OMP_NUM_THREADS=1``. With ``PYTHONPATH`` pointing at an older checkout it measures that checkout's reader
(rows it cannot make, such as ``synthkit-nohash``, are left out), which is how the before/after tables in
``eval/README.md`` were made in one sitting.

    OMP_NUM_THREADS=1 python eval/bench_reader.py [--n 20000] [--repeats 3] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import os
import platform
import resource
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from synthkit.config import DataConfig
from synthkit.data.convert import convert_source
from synthkit.data.sources import load_source
from synthkit.shards.mix import MixedShardStream, MixSource, collate_images


def _gray_loader(path: str) -> Image.Image:
    """ImageFolder's default loader converts to RGB; gray keeps the tensors equal to the other paths."""
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
    """The best of ``repeats`` epochs: the highest images per second and the lowest CPU microseconds per
    image (each the least disturbed by other jobs on a shared machine).

    CPU time per image is the figure to compare there: wall-clock rates with workers depend on how many
    cores other jobs leave free.
    """
    rate, us = 0.0, float("inf")
    for _ in range(repeats):
        wall, cpu, n = _epoch(loader_factory())  # a fresh loader each epoch, as in training
        if n != expect:
            raise RuntimeError(f"loader yielded {n} images, expected {expect}")
        rate, us = max(rate, n / wall), min(us, cpu / n * 1e6)
    return rate, us


def _png_members(shard_dir: Path) -> list[list[bytes]]:
    """The PNG bytes of every shard, read with tarfile (outside any timed loop)."""
    import tarfile

    out = []
    for path in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            out.append([tar.extractfile(m).read() for m in tar if m.name.endswith(".png")])  # type: ignore[union-attr]
    return out


def _decode_rows(shards: list[list[bytes]], repeats: int) -> list[tuple[str, int, tuple[float, float]]]:
    """Decoding alone, per image, over bytes in memory: torchvision, PIL, and synthkit's checked decoder."""
    from torchvision.io import decode_png

    flat = [data for shard in shards for data in shard]

    def torchvision_decode() -> None:
        for data in flat:
            decode_png(torch.frombuffer(data, dtype=torch.uint8))

    decode_op = torch.ops.image.decode_png  # the same libpng call without the Python wrapper's warning

    def torchvision_op_decode() -> None:
        for data in flat:
            decode_op(torch.frombuffer(data, dtype=torch.uint8), 0, False)

    def pil_decode() -> None:
        for data in flat:
            np.asarray(Image.open(io.BytesIO(data), formats=["PNG"]))

    funcs: dict[str, Callable[[], None]] = {
        "decode:torchvision": torchvision_decode,
        "decode:torchvision-op": torchvision_op_decode,
        "decode:pil": pil_decode,
    }
    try:
        from synthkit.shards.decode import decode_png_batch, inflate_exact, png_header
    except ImportError:  # an older checkout: it had no separate decoder
        pass
    else:

        def synthkit_decode() -> None:
            for shard in shards:
                where = ["x"] * len(shard)
                headers = [png_header("x", data) for data in shard]
                raws = [inflate_exact("x", h) for h in headers]
                decode_png_batch(where, headers, raws)

        funcs["decode:synthkit"] = synthkit_decode
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 warns about its deprecated decoders on every call
        for name, fn in funcs.items():
            rate, us = 0.0, float("inf")
            for _ in range(repeats):
                wall, cpu = time.perf_counter(), _cpu_seconds()
                fn()
                wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
                rate, us = max(rate, len(flat) / wall), min(us, cpu / len(flat) * 1e6)
            rows.append((name, 0, (rate, us)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="images (a fixed subset of the training split)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    ap.add_argument("--label", default="", help="a name for this run in the JSON record (e.g. before/after)")
    args = ap.parse_args()
    import webdataset as wds

    cfg = DataConfig(name="fashion-mnist", size=28, subset=args.n)
    data = load_source(cfg, "train")
    assert data.labels is not None
    has_nohash = "check_hash" in inspect.signature(MixedShardStream).parameters
    with tempfile.TemporaryDirectory(prefix="bench_reader_") as tmp:
        # 1. The layouts of the same images.
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
        urls = [str(Path(tmp) / "shards" / s["name"]) for s in manifest["shards"]]
        folder = ImageFolder(
            str(Path(tmp) / "folder"), transform=transforms.PILToTensor(), loader=_gray_loader
        )
        memory = TensorDataset(data.images, data.labels)
        rows: list[tuple[str, int, tuple[float, float]]] = []
        for workers in args.workers:
            variants = [("synthkit", {})] + (
                [("synthkit-nohash", {"check_hash": False})] if has_nohash else []
            )
            for name, kwargs in variants:
                stream = MixedShardStream([source], seed=0, epoch_samples=args.n, **kwargs)
                expect = stream.samples_per_rank(workers)

                def stream_loader(s: MixedShardStream = stream, w: int = workers) -> DataLoader:
                    return DataLoader(s, batch_size=args.batch, num_workers=w, collate_fn=collate_images)

                rows.append((name, workers, _best(stream_loader, args.repeats, expect)))

            def wds_loader(w: int = workers) -> DataLoader:
                ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("l8").to_tuple("png")
                return DataLoader(ds, batch_size=args.batch, num_workers=w)

            def folder_loader(w: int = workers) -> DataLoader:
                return DataLoader(folder, batch_size=args.batch, num_workers=w)

            rows.append(("webdataset", workers, _best(wds_loader, args.repeats, args.n)))
            rows.append(("imagefolder", workers, _best(folder_loader, args.repeats, args.n)))
        rows.append(
            ("in-memory", 0, _best(lambda: DataLoader(memory, batch_size=args.batch), args.repeats, args.n))
        )
        rows += _decode_rows(_png_members(Path(tmp) / "shards"), args.repeats)

    # 3. Report.
    rate = {(name, w): r[0] for name, w, r in rows}
    cpu = {(name, w): r[1] for name, w, r in rows}
    print(f"\n{'reader':<20} {'workers':>7} {'images/s':>10} {'CPU us/image':>13}")
    for name, workers, (r, us) in rows:
        print(f"{name:<20} {workers:>7} {r:>10.0f} {us:>13.1f}")
    ratios = {}
    for workers in args.workers:
        ratios[f"synthkit/imagefolder@{workers} (images/s)"] = (
            rate["synthkit", workers] / rate["imagefolder", workers]
        )
    ratios["synthkit@0 CPU / decode:torchvision CPU"] = cpu["synthkit", 0] / cpu["decode:torchvision", 0]
    ratios["synthkit@0 CPU / decode:torchvision-op CPU"] = (
        cpu["synthkit", 0] / cpu["decode:torchvision-op", 0]
    )
    if ("decode:synthkit", 0) in cpu:
        ratios["synthkit@0 CPU / decode:synthkit CPU"] = cpu["synthkit", 0] / cpu["decode:synthkit", 0]
    if has_nohash:
        ratios["hash cost @0 (CPU us/image)"] = cpu["synthkit", 0] - cpu["synthkit-nohash", 0]
    print()
    for label, value in ratios.items():
        print(f"{label:<44} {value:8.3f}")
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs (wall-clock rates with workers need free cores)")
    record = {
        "bench": "reader",
        "label": args.label,
        "n": args.n,
        "batch": args.batch,
        "maxcount": args.maxcount,
        "images_per_s": {f"{name}@{w}": round(r[0], 1) for name, w, r in rows},
        "cpu_us_per_image": {f"{name}@{w}": round(r[1], 2) for name, w, r in rows},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(load, 2),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
