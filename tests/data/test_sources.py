"""Real image sources: shapes, splits, conversions, idx parsing, folders and actionable errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthkit.config import DataConfig
from synthkit.data.sources import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    DataSourceError,
    ImageSet,
    load_source,
    resize_images,
)


def test_unknown_split_is_an_error() -> None:
    with pytest.raises(DataSourceError, match="split"):
        load_source(DataConfig(), "val")


def test_imageset_validates_its_tensors() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(torch.zeros(2, 1, 8, 8), None, "x", None)
    with pytest.raises(ValueError, match="labels"):
        ImageSet(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), "x", None)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_labels_and_disjoint_stable_splits() -> None:
    train = load_source(DataConfig(name="digits", size=8), "train")
    test = load_source(DataConfig(name="digits", size=8), "test")
    assert len(train) == 1437 and len(test) == 360
    assert train.images.shape == (1437, 1, 8, 8) and train.images.dtype == torch.uint8
    assert train.labels is not None and train.labels.dtype == torch.int64
    assert train.classes == tuple(str(i) for i in range(10)) and train.name == "digits"
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    # Stratified: every class is in both splits in about the same proportion.
    assert test.labels is not None
    assert torch.bincount(test.labels, minlength=10).min() >= 35
    # The split is the documented one (stratified, 20 %, random_state=0), so train and test are disjoint.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    raw = torch.from_numpy(np.rint(bunch.images * 255 / 16).astype(np.uint8))
    tr_idx, te_idx = train_test_split(np.arange(1797), test_size=0.2, random_state=0, stratify=bunch.target)
    assert not set(tr_idx) & set(te_idx)
    assert torch.equal(train.images[:, 0], raw[np.sort(tr_idx)])
    assert torch.equal(test.images[:, 0], raw[np.sort(te_idx)])
    again = load_source(DataConfig(name="digits", size=8), "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def test_digits_resize_and_channel_conversion() -> None:
    small = load_source(DataConfig(name="digits", size=8), "train")
    big = load_source(DataConfig(name="digits", size=16), "train")
    rgb = load_source(DataConfig(name="digits", size=16, channels=3), "train")
    assert big.images.shape == (1437, 1, 16, 16)
    assert rgb.images.shape == (1437, 3, 16, 16)
    assert torch.equal(rgb.images[:, 0], big.images[:, 0]) and torch.equal(rgb.images[:, 2], big.images[:, 0])
    same_size_rgb = load_source(DataConfig(name="digits", size=8, channels=3), "train")
    assert torch.equal(same_size_rgb.images, small.images.expand(-1, 3, -1, -1))
    back = load_source(DataConfig(name="digits", size=8, channels=1), "train")
    assert torch.equal(back.images, small.images)
    # Resizing keeps the mean brightness (bilinear interpolation averages).
    assert abs(big.images.float().mean() - small.images.float().mean()) < 2.0
    assert torch.equal(small.labels, big.labels)


def test_rgb_to_gray_is_601_luma_rounded_once_and_a_resize_beyond_memory_is_refused() -> None:
    rgb = torch.tensor([[200, 10, 255], [0, 255, 7]], dtype=torch.uint8).view(2, 3, 1, 1)
    gray = resize_images(rgb.expand(-1, -1, 2, 2), 2, 1)
    expected = [round(0.299 * 200 + 0.587 * 10 + 0.114 * 255), round(0.587 * 255 + 0.114 * 7)]
    assert gray.shape == (2, 1, 2, 2) and gray[:, 0, 0, 0].tolist() == expected
    assert torch.equal(resize_images(gray, 2, 3), gray.expand(-1, 3, -1, -1))
    # checked before anything is allocated: a million-pixel side needs terabytes
    with pytest.raises(
        DataSourceError, match=r"data.size=1000000: 2 images of 1x1000000x1000000 need .* GiB"
    ):
        resize_images(gray, 10**6, None)


def test_subset_is_deterministic_and_train_only() -> None:
    a = load_source(DataConfig(name="digits", size=8, subset=100, subset_seed=3), "train")
    b = load_source(DataConfig(name="digits", size=8, subset=100, subset_seed=3), "train")
    c = load_source(DataConfig(name="digits", size=8, subset=100, subset_seed=4), "train")
    assert len(a) == 100 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels) or not torch.equal(a.images, c.images)
    assert len(load_source(DataConfig(name="digits", size=8, subset=100), "test")) == 360
    with pytest.raises(DataSourceError, match="subset"):
        load_source(DataConfig(name="digits", size=8, subset=5000), "train")


# --------------------------------------------------------------------------- fashion-mnist


def _idx_bytes(magic: int, arr: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx(path: Path, data: bytes, gz: bool) -> None:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _fake_fashion(root: Path, gz: bool, n_train: int = 6, n_test: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    y = np.arange(n_train, dtype=np.uint8) % 10
    _write_idx(root / "train-images-idx3-ubyte", _idx_bytes(2051, x), gz)
    _write_idx(root / "train-labels-idx1-ubyte", _idx_bytes(2049, y), gz)
    xt = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    _write_idx(root / "t10k-images-idx3-ubyte", _idx_bytes(2051, xt), gz)
    _write_idx(root / "t10k-labels-idx1-ubyte", _idx_bytes(2049, np.arange(n_test, dtype=np.uint8)), gz)
    return x, y


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path: Path, gz: bool) -> None:
    x, y = _fake_fashion(tmp_path, gz)
    train = load_source(DataConfig(name="fashion-mnist", root=str(tmp_path), size=28), "train")
    assert train.images.shape == (6, 1, 28, 28) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images[:, 0].numpy(), x)
    assert train.labels is not None and train.labels.tolist() == y.tolist()
    assert train.classes == FASHION_MNIST_CLASSES and len(train.classes) == 10
    test = load_source(DataConfig(name="fashion-mnist", root=str(tmp_path), size=14, channels=3), "test")
    assert test.images.shape == (4, 3, 14, 14)


def test_fashion_mnist_corrupt_magic_names_the_file(tmp_path: Path) -> None:
    _fake_fashion(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    data = bytearray(bad.read_bytes())
    data[:4] = (1234).to_bytes(4, "big")
    bad.write_bytes(bytes(data))
    with pytest.raises(DataSourceError, match="train-images-idx3-ubyte.*magic"):
        load_source(DataConfig(name="fashion-mnist", root=str(tmp_path)), "train")


def test_fashion_mnist_truncated_files_name_the_file(tmp_path: Path) -> None:
    _fake_fashion(tmp_path, gz=False)
    raw = tmp_path / "train-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:-100])
    with pytest.raises(DataSourceError, match="train-images-idx3-ubyte.*truncated"):
        load_source(DataConfig(name="fashion-mnist", root=str(tmp_path)), "train")
    # A truncated gzip stream is caught too (test split, gzipped).
    gz_root = tmp_path / "gz"
    gz_root.mkdir()
    _fake_fashion(gz_root, gz=True)
    labels = gz_root / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:15])
    with pytest.raises(DataSourceError, match="t10k-labels-idx1-ubyte.gz"):
        load_source(DataConfig(name="fashion-mnist", root=str(gz_root)), "test")


def test_fashion_mnist_missing_root_says_how_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataSourceError, match="dataset-fashion-mnist") as err:
        load_source(DataConfig(name="fashion-mnist", root=str(missing)), "train")
    assert "--data.root" in str(err.value) and str(missing) in str(err.value)
    # A root with some files missing names the missing file.
    (tmp_path / "partial").mkdir()
    with pytest.raises(DataSourceError, match="train-images-idx3-ubyte"):
        load_source(DataConfig(name="fashion-mnist", root=str(tmp_path / "partial")), "train")


@pytest.mark.skipif(
    not any(Path(FASHION_MNIST_ROOT).glob("train-images-idx3-ubyte*")),
    reason="dataset-fashion-mnist is not installed (no train-images-idx3-ubyte in its directory)",
)
def test_real_fashion_mnist_train_split() -> None:
    train = load_source(DataConfig(name="fashion-mnist", size=28), "train")
    assert train.images.shape == (60000, 1, 28, 28)
    assert train.labels is not None and torch.bincount(train.labels).tolist() == [6000] * 10


# --------------------------------------------------------------------------- cifar


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_without_a_local_copy_never_downloads(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataSourceError, match="--data.root"):
        load_source(DataConfig(name=name), "train")
    with pytest.raises(DataSourceError, match="never downloads"):
        load_source(DataConfig(name=name, root=str(tmp_path)), "train")
    assert list(tmp_path.iterdir()) == []  # nothing was fetched or created


# --------------------------------------------------------------------------- folder


def _mixed_mode_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8))
    modes = {
        "gray.png": Image.fromarray(rng.integers(0, 256, size=(9, 9), dtype=np.uint8)),
        "rgb.jpg": rgb,
        "rgba.png": Image.fromarray(np.zeros((8, 8, 4), dtype=np.uint8)),  # fully transparent
        "pal.png": rgb.convert("P"),
        "deep.png": Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)),
        "mono.bmp": Image.new("1", (7, 7), 1),
    }
    assert [im.mode for im in modes.values()] == ["L", "RGB", "RGBA", "P", "I;16", "1"]
    return modes


def test_folder_with_classes_and_mixed_modes(tmp_path: Path) -> None:
    images = _mixed_mode_images()
    layout = {"cat": ["gray.png", "rgb.jpg", "rgba.png"], "ant": ["pal.png", "deep.png", "mono.bmp"]}
    for cls, names in layout.items():
        (tmp_path / cls).mkdir()
        for name in names:
            images[name].save(tmp_path / cls / name)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    data = load_source(DataConfig(name="folder", root=str(tmp_path), size=8), "train")
    assert data.images.shape == (6, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.classes == ("ant", "cat")
    assert data.labels is not None and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    # Sorted paths: ant/deep.png, ant/mono.bmp, ant/pal.png, cat/gray.png, cat/rgb.jpg, cat/rgba.png.
    assert int(data.images[0].min()) == 255  # 16-bit full scale -> 255
    assert int(data.images[1].min()) == 255  # mode "1" white
    assert int(data.images[5].min()) == 255  # transparent composited on white
    gray = load_source(DataConfig(name="folder", root=str(tmp_path), size=8, channels=1), "train")
    assert gray.images.shape == (6, 1, 8, 8)
    with pytest.raises(DataSourceError, match="train/ and test/"):
        load_source(DataConfig(name="folder", root=str(tmp_path), size=8), "test")


def test_folder_flat_grayscale_is_unlabeled_one_channel(tmp_path: Path) -> None:
    images = _mixed_mode_images()
    for name in ("gray.png", "deep.png", "mono.bmp"):
        images[name].save(tmp_path / name)
    data = load_source(DataConfig(name="folder", root=str(tmp_path), size=8, subset=2), "train")
    assert data.images.shape == (2, 1, 8, 8) and data.labels is None and data.classes is None


def test_folder_train_test_layout(tmp_path: Path) -> None:
    img = _mixed_mode_images()["rgb.jpg"]
    for split, classes in {"train": ["a", "b"], "test": ["b"]}.items():
        for cls in classes:
            (tmp_path / split / cls).mkdir(parents=True)
            img.save(tmp_path / split / cls / "x.jpg")
    train = load_source(DataConfig(name="folder", root=str(tmp_path), size=8), "train")
    test = load_source(DataConfig(name="folder", root=str(tmp_path), size=8), "test")
    assert len(train) == 2 and train.classes == ("a", "b")
    assert test.classes == ("a", "b") and test.labels is not None and test.labels.tolist() == [1]


def test_folder_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no images"):
        load_source(DataConfig(name="folder", root=str(tmp_path / "empty")), "train")
    with pytest.raises(DataSourceError, match="does not exist"):
        load_source(DataConfig(name="folder", root=str(tmp_path / "missing")), "train")
    broken = tmp_path / "broken"
    broken.mkdir()
    _mixed_mode_images()["gray.png"].save(broken / "a.png")
    (broken / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataSourceError, match="b.png"):
        load_source(DataConfig(name="folder", root=str(broken)), "train")


def test_rgb_to_gray_uses_601_luma(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "blue.png")
    data = load_source(DataConfig(name="folder", root=str(tmp_path), size=8, channels=1), "train")
    assert data.images[:, 0, 0, 0].tolist() == [29, 76]  # blue.png, red.png: 0.114 * 255, 0.299 * 255
