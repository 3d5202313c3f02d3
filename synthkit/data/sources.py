"""Real image sources: the embedded digits, Fashion-MNIST idx files, CIFAR-10/100 and image folders.

Every source returns an :class:`ImageSet` of uint8 ``N x C x H x W`` images, already resized to
``DataConfig.size`` (antialiased bilinear, the aspect ratio is not kept) and converted to
``DataConfig.channels`` when that is set. Nothing here ever downloads: sources that are not the embedded
default read a local copy and say how to get one when it is missing.

Example::

    >>> from synthkit.config import DataConfig
    >>> train = load_source(DataConfig(name="digits", size=16), "train")
    >>> train.images.shape, train.images.dtype
    (torch.Size([1437, 1, 16, 16]), torch.uint8)
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from synthkit.config import DataConfig
from synthkit.errors import DataSourceError
from synthkit.registry import SOURCES

SPLITS = ("train", "test")
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_RESIZE_CHUNK = 4096
# ITU-R BT.601 luma, the weights PIL's ``convert("L")`` uses.
_LUMA = (0.299, 0.587, 0.114)


__all__ = ["DataSourceError", "ImageSet", "check_source", "folder_channels", "load_source"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images of one split of a source (compared by identity: tensors have no single truth value).

    Args:
        images: uint8 ``N x C x H x W`` with ``C`` in (1, 3).
        labels: int64 ``N`` class indices into ``classes``, or None for unlabeled data.
        name: the source's name (``DataConfig.name``).
        classes: class names, or None when the source has none.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    name: str
    classes: tuple[str, ...] | None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(
                f"ImageSet.images must be uint8 N x C x H x W with C in (1, 3), "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels is not None and (
            self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],)
        ):
            raise ValueError(
                f"ImageSet.labels must be int64 of shape ({self.images.shape[0]},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------- shared steps


def available_memory() -> int | None:
    """Bytes of memory available to allocate now (Linux: MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def resize_images(images: torch.Tensor, size: int, channels: int | None) -> torch.Tensor:
    """Convert channels (601 luma / repeated gray) and resize to ``size`` x ``size``, in bounded chunks.

    The conversion and the antialiased bilinear resize both run in float32 and are rounded once at the end,
    so a source needs no more than one chunk of float memory on top of its uint8 images.
    """
    c, h, w = images.shape[1:]
    out_c = channels or c
    if out_c == c and (h, w) == (size, size):
        return images.contiguous()
    _check_resize_memory(images.shape[0], out_c, size)
    out = torch.empty((images.shape[0], out_c, size, size), dtype=torch.uint8)
    luma = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        x = _convert_channels(images[start : start + _RESIZE_CHUNK].to(torch.float32), out_c, luma)
        if (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + x.shape[0]] = x.round().clamp_(0, 255).to(torch.uint8)
    return out


def _check_resize_memory(n: int, channels: int, size: int) -> None:
    """Refuse a resize whose output and one float32 chunk would not fit in the memory available now."""
    need = n * channels * size * size + min(_RESIZE_CHUNK, n) * channels * size * size * 4
    available = available_memory()
    if available is not None and need > available:
        raise DataSourceError(
            f"data.size={size}: {n} images of {channels}x{size}x{size} need "
            f"{need / 2**30:.3g} GiB in memory, and {available / 2**30:.3g} GiB are available; choose a "
            "smaller data.size or data.subset"
        )


def _convert_channels(x: torch.Tensor, channels: int, luma: torch.Tensor) -> torch.Tensor:
    """Float N x C x H x W images to ``channels``: RGB to gray by ``luma`` (601), gray to RGB repeated."""
    c = x.shape[1]
    if channels == 1 and c == 3:
        return (x * luma).sum(dim=1, keepdim=True)
    if channels == 3 and c == 1:
        return x.expand(-1, 3, -1, -1)
    return x


def subset_indices(n: int, cfg: DataConfig) -> np.ndarray | None:
    """The fixed random subset of ``cfg.subset`` training images, in their original order (or None)."""
    if cfg.subset is None:
        return None
    if cfg.subset > n:
        raise DataSourceError(
            f"data.subset={cfg.subset} is larger than the {n} training images of {cfg.name!r}; "
            f"use a smaller subset or null"
        )
    perm = np.random.default_rng(cfg.subset_seed).permutation(n)
    return np.sort(perm[: cfg.subset])


def _finish(
    cfg: DataConfig,
    split: str,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    classes: tuple[str, ...] | None,
) -> ImageSet:
    """Apply the training subset (before resizing, to save work), then size and channels."""
    if split == "train":
        keep = subset_indices(images.shape[0], cfg)
        if keep is not None:
            idx = torch.from_numpy(keep)
            images = images[idx]
            labels = labels[idx] if labels is not None else None
    images = resize_images(images, cfg.size, cfg.channels)
    return ImageSet(images=images, labels=labels, name=cfg.name, classes=classes)


# --------------------------------------------------------------------------- digits


def load_digits(cfg: DataConfig, split: str) -> ImageSet:
    """scikit-learn's bundled 8x8 digits (UCI optical digits test set), 1,797 images, 10 classes.

    The held-out split is fixed: stratified, 20 % test, ``train_test_split(random_state=0)``; train and test
    are disjoint and the same on every machine. Pixel values 0..16 are scaled to 0..255.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    y = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    idx = np.sort(train_idx if split == "train" else test_idx)
    images = torch.from_numpy(x[idx]).unsqueeze(1)
    labels = torch.from_numpy(y[idx])
    return _finish(cfg, split, images, labels, tuple(str(c) for c in bunch.target_names))


# --------------------------------------------------------------------------- fashion-mnist (idx files)


def _fashion_mnist_missing(path: Path) -> DataSourceError:
    return DataSourceError(
        f"Fashion-MNIST not found: {path} does not exist. Install the Debian package with "
        f"`apt-get install dataset-fashion-mnist` (files in {FASHION_MNIST_ROOT}), or pass --data.root=DIR "
        f"pointing at a directory with train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), "
        f"t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz). synthkit never downloads."
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one idx file (LeCun's MNIST format: big-endian magic, dimensions, then unsigned bytes)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataSourceError(f"cannot read idx file {path}: {e}; the file is corrupt or truncated") from e
    ndim = {_IDX_IMAGES_MAGIC: 3, _IDX_LABELS_MAGIC: 1}[magic]
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DataSourceError(f"idx file {path} is truncated: {len(raw)} bytes is shorter than its header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataSourceError(
            f"idx file {path} has magic number {found}, expected {magic} "
            f"({'images' if magic == _IDX_IMAGES_MAGIC else 'labels'}); the file is corrupt or not idx"
        )
    dims = tuple(int.from_bytes(raw[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataSourceError(
            f"idx file {path} is truncated or corrupt: header says {dims} ({expected} bytes of data), "
            f"found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_path(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise _fashion_mnist_missing(root / f"{stem}.gz")


def load_fashion_mnist(cfg: DataConfig, split: str) -> ImageSet:
    """Fashion-MNIST (Xiao et al., 2017) from its idx files, 28x28 grayscale, 10 classes, 60k/10k."""
    root = Path(cfg.root or FASHION_MNIST_ROOT)
    if not root.is_dir():
        raise _fashion_mnist_missing(root)
    prefix = "train" if split == "train" else "t10k"
    images_path = _idx_path(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _idx_path(root, f"{prefix}-labels-idx1-ubyte")
    x = _read_idx(images_path, _IDX_IMAGES_MAGIC)
    y = _read_idx(labels_path, _IDX_LABELS_MAGIC)
    if len(x) != len(y):
        raise DataSourceError(f"{images_path} has {len(x)} images but {labels_path} has {len(y)} labels")
    if y.size and int(y.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataSourceError(f"{labels_path} has label {int(y.max())}; Fashion-MNIST has 10 classes")
    # Copy once: the parsed arrays are read-only views of the file's bytes.
    images = torch.from_numpy(x.copy()).unsqueeze(1)
    labels = torch.from_numpy(y.astype(np.int64))
    return _finish(cfg, split, images, labels, FASHION_MNIST_CLASSES)


# --------------------------------------------------------------------------- cifar


def load_cifar(cfg: DataConfig, split: str) -> ImageSet:
    """CIFAR-10 / CIFAR-100 (Krizhevsky, 2009) through torchvision, from a local copy only.

    torchvision unpickles the CIFAR batch files; pickle is the official distribution format of the python
    version of CIFAR, and here it is read from the user's own local copy (``data.root``), never from shards.
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    if cfg.name == "cifar10":
        cls, folder = CIFAR10, "cifar-10-batches-py"
    else:
        cls, folder = CIFAR100, "cifar-100-python"
    if cfg.root is None:
        raise DataSourceError(
            f"{cfg.name} needs a local copy: pass --data.root=DIR pointing at the directory containing "
            f"{folder}/ (synthkit never downloads)"
        )
    try:
        ds = cls(cfg.root, train=split == "train", download=False)
    except RuntimeError as e:
        if "not found or corrupted" not in str(e):
            raise
        raise DataSourceError(
            f"{cfg.name} is not at data.root={cfg.root}: expected {Path(cfg.root) / folder} with the "
            f"python-version batch files (and matching checksums). synthkit never downloads; put the "
            f"extracted archive there or point --data.root at the directory containing {folder}/"
        ) from e
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return _finish(cfg, split, images, labels, tuple(ds.classes))


# --------------------------------------------------------------------------- image folder


def _read_image(path: Path) -> np.ndarray:
    """One file as uint8 ``H x W`` (grayscale modes) or ``H x W x 3`` (everything else).

    Transparency is composited on white; palette images become RGB; 16-bit and 32-bit integer images are
    scaled from 0..65535 to 0..255; float images are clipped to 0..255.
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
                mode = "RGBA"
            if mode in ("RGBA", "RGBa", "PA", "LA", "La"):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                flat = Image.alpha_composite(white, rgba)
                return np.asarray(flat.convert("L" if mode in ("LA", "La") else "RGB"))
            if mode in ("1", "L"):
                return np.asarray(im.convert("L"))
            if mode.startswith("I"):
                arr = np.asarray(im).astype(np.float64)
                return np.rint(np.clip(arr, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
            if mode == "F":
                return np.rint(np.clip(np.asarray(im), 0, 255)).astype(np.uint8)
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataSourceError(f"cannot read image {path}: {e}") from e


def _image_files(directory: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(
        p
        for p in directory.glob(pattern)
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def _class_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_gray_mode(mode: str) -> bool:
    """Whether :func:`_read_image` reads a file of this PIL mode as one channel (the header tells)."""
    return mode in ("1", "L", "LA", "La", "F") or mode.startswith("I")


def _folder_files(root: Path, split: str) -> tuple[list[Path], list[int], tuple[str, ...] | None]:
    """The files of one split of an image folder, their labels and the class names (None: unlabeled)."""
    split_layout = (root / "train").is_dir() and (root / "test").is_dir()
    if not split_layout and split == "test":
        raise DataSourceError(
            f"image folder {root} has no test split: a folder source needs train/ and test/ subfolders "
            f"(each with the same class subfolders) for evaluation"
        )
    base = root / split if split_layout else root
    train_base = root / "train" if split_layout else root

    classes: tuple[str, ...] | None = None
    class_dirs = _class_dirs(base)
    if class_dirs:
        loose = _image_files(base, recursive=False)
        if loose:
            raise DataSourceError(
                f"image folder {base} mixes image files (e.g. {loose[0].name}) with class subfolders; "
                f"put every image in a class subfolder, or use a flat folder without subfolders"
            )
        classes = tuple(d.name for d in _class_dirs(train_base))
        index = {name: i for i, name in enumerate(classes)}
        files: list[Path] = []
        label_list: list[int] = []
        for d in class_dirs:
            if d.name not in index:
                raise DataSourceError(f"class folder {d} has no counterpart in {train_base}")
            found = _image_files(d, recursive=True)
            if not found:
                raise DataSourceError(f"class folder {d} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
            label_list += [index[d.name]] * len(found)
    else:
        files = _image_files(base, recursive=False)
        label_list = []
    if not files:
        raise DataSourceError(f"image folder {base} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files, label_list, classes


def _count_modes(files: list[Path]) -> tuple[int, int]:
    """(grayscale, colour) files, read off the headers only (nothing is decoded)."""
    gray = 0
    for path in files:
        try:
            with Image.open(path) as im:
                gray += _is_gray_mode(im.mode)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataSourceError(f"cannot read image {path}: {e}") from e
    return gray, len(files) - gray


def folder_channels(cfg: DataConfig) -> int:
    """The channels every split of an image folder is read with, the same for train and test.

    ``data.channels`` (1 or 3) when set: every image is converted to it. Otherwise (null, "auto") each
    split's own mode, read off the file headers: 1 when every image of the split is grayscale, else 3 (the
    grayscale images of a mixed split repeated into RGB, with a log line saying so); and the splits must
    agree, since an encoder trained on one channel count cannot read the other: a folder whose train/ is
    grayscale and test/ colour (or the reverse) is a DataSourceError that names both ways out.
    """
    if cfg.channels is not None:
        return cfg.channels
    root = Path(str(cfg.root))
    if not root.is_dir():
        raise DataSourceError(f"image folder data.root={root} does not exist or is not a directory")
    splits = SPLITS if (root / "train").is_dir() and (root / "test").is_dir() else ("train",)
    found: dict[str, tuple[int, int]] = {}
    for split in splits:
        gray, colour = found[split] = _count_modes(_folder_files(root, split)[0])
        if gray and colour:
            logger.info(
                "image folder %s: %d grayscale and %d colour images; all read as RGB (data.channels=null); "
                "--data.channels=1 reads them as grayscale",
                root / split if len(splits) > 1 else root,
                gray,
                colour,
            )
    channels = {split: 3 if colour else 1 for split, (gray, colour) in found.items()}
    if len(set(channels.values())) > 1:
        say = {
            split: f"{split}/ is {'RGB' if c == 3 else 'grayscale'} ({found[split][1]} of "
            f"{sum(found[split])} images in colour)"
            for split, c in channels.items()
        }
        raise DataSourceError(
            f"image folder {root} has different channel modes in its splits: {say['train']} but "
            f"{say['test']}; set --data.channels=1 (all read as grayscale) or --data.channels=3 (all as RGB)"
        )
    return channels["train"]


def check_source(cfg: DataConfig, *, test: bool = True) -> None:
    """Check a source before any work starts (the CLI calls it before a run directory exists).

    For an image folder: its layout (both splits when ``test``: the kNN monitor's and ``synthkit eval``'s
    labeled test split), every file's header and the channel mode across splits (:func:`folder_channels`),
    without decoding any image. Other sources are checked when they are read (their files are few).

    Raises:
        DataSourceError: the problem, in one line.
    """
    if cfg.name != "folder":
        return
    root = Path(str(cfg.root))
    if not root.is_dir():
        raise DataSourceError(f"image folder data.root={root} does not exist or is not a directory")
    _, _, classes = _folder_files(root, "train")
    if test and classes is not None and not ((root / "train").is_dir() and (root / "test").is_dir()):
        raise DataSourceError(
            f"image folder {root} has class subfolders but no train/ and test/ splits: the kNN monitor "
            f"(train.knn_every) reads labeled test images from {root / 'test'}; put the classes under "
            f"{root / 'train'} and {root / 'test'}, or set --train.knn_every=0"
        )
    folder_channels(cfg)


def load_folder(cfg: DataConfig, split: str) -> ImageSet:
    """Images from ``data.root``, laid out like torchvision's ``ImageFolder`` or flat.

    ``root/<class>/**/*.png`` gives labels from the sorted class folder names; a folder of images with no
    subfolders gives unlabeled data. With ``root/train`` and ``root/test`` both present these are the
    splits (class names come from ``train/``); otherwise the whole folder is the training split and there is
    no test split. Output channels: :func:`folder_channels` (``data.channels``, else each split's own mode,
    which must be the same in train and test).
    """
    root = Path(str(cfg.root))
    if not root.is_dir():
        raise DataSourceError(f"image folder data.root={root} does not exist or is not a directory")
    files, label_list, classes = _folder_files(root, split)
    labels = torch.tensor(label_list, dtype=torch.int64) if classes is not None else None

    if split == "train":
        keep = subset_indices(len(files), cfg)
        if keep is not None:
            files = [files[i] for i in keep]
            labels = labels[torch.from_numpy(keep)] if labels is not None else None

    channels = folder_channels(cfg)
    arrays = [_read_image(p) for p in files]
    images = torch.empty((len(arrays), channels, cfg.size, cfg.size), dtype=torch.uint8)
    # Batch the resize over images that share a shape; the output order stays that of ``files``.
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(a.shape, []).append(i)
    for shape, members in groups.items():
        batch = np.stack([arrays[i] for i in members])
        batch = batch[:, None] if len(shape) == 2 else batch.transpose(0, 3, 1, 2)
        batch_t = torch.from_numpy(np.ascontiguousarray(batch))
        images[members] = resize_images(batch_t, cfg.size, channels)
    return ImageSet(images=images, labels=labels, name=cfg.name, classes=classes)


# --------------------------------------------------------------------------- registry


def load_source(cfg: DataConfig, split: str = "train") -> ImageSet:
    """Load one split (``"train"`` or ``"test"``) of the source ``cfg.name``.

    Images are resized to ``cfg.size`` (antialiased bilinear; skipped when already that size) and converted
    to ``cfg.channels`` when set (3 -> 1: ITU-R 601 luma; 1 -> 3: repeated gray). ``cfg.subset`` applies to
    the training split only: a fixed subset drawn with ``numpy.random.default_rng(cfg.subset_seed)``.

    Raises:
        DataSourceError: unknown split, missing or corrupt files, or a subset larger than the split.
    """
    if split not in SPLITS:
        raise DataSourceError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if cfg.name not in SOURCES:
        raise DataSourceError(f"no loader for data source {cfg.name!r} (known: {', '.join(SOURCES.names())})")
    return SOURCES.get(cfg.name)(cfg, split)
