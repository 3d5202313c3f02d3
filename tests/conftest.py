"""Shared fixtures: a tiny pipeline that trains in seconds on the embedded digits."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthkit.config import PipelineConfig, load_pipeline

TINY_PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.yaml"
TINY_DIFFUSION = Path(__file__).resolve().parents[1] / "pipelines" / "tiny-diffusion.yaml"


def tiny_config(*extra: str) -> PipelineConfig:
    return load_pipeline(TINY_PIPELINE, list(extra))


@pytest.fixture
def tiny_pipeline(tmp_path: Path) -> Path:
    """The tiny pipeline as a YAML file, for CLI tests."""
    from synthkit.config import save_pipeline

    path = tmp_path / "tiny.yaml"
    save_pipeline(tiny_config(), path)
    return path


def write_idx(path: Path, magic: int, arr) -> None:
    """One idx file (LeCun's MNIST format): big-endian magic and dimensions, then the unsigned bytes."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype("uint8").tobytes())


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny stand-in for Debian's Fashion-MNIST files (28 px idx files, 400 train / 100 test images), so
    no test needs ``dataset-fashion-mnist`` installed."""
    import numpy as np

    root = tmp_path_factory.mktemp("fashion-mnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 400), ("t10k", 100)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        # class-dependent blobs, so features carry some signal
        yy, xx = np.mgrid[:28, :28]
        centres = np.stack([6 + 16 * (labels % 2), 4 + 2 * (labels // 2)], axis=1)[:, :, None, None]
        blob = 255 * np.exp(-((yy - centres[:, 0]) ** 2 + (xx - centres[:, 1]) ** 2) / 30.0)
        images = np.clip(blob + rng.normal(0, 20, blob.shape), 0, 255).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", 2051, images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", 2049, labels)
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny HSG run shared by the tests that only read it."""
    from synthkit.training.loop import train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(), run, progress=False)
    return run


@pytest.fixture(scope="session")
def pair_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny HSG+HPG cGAN run shared by the tests that only read it."""
    from synthkit.training.loop import train

    run = tmp_path_factory.mktemp("runs") / "hsg_hpg"
    train(tiny_config("--hpg.enabled=true", "--hpg.warmup_epochs=1"), run, progress=False)
    return run


@pytest.fixture(scope="session")
def diffusion_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny diffusion run (guided hard samples, branched pairs) shared by the tests that only read it."""
    from synthkit.training.loop import train

    run = tmp_path_factory.mktemp("runs") / "tiny-diffusion"
    train(load_pipeline(TINY_DIFFUSION), run, progress=False)
    return run


# What audit_shards plants: indices of the real digits (train split, 16 px) it copies, blanks, pairs.
AUDIT_HARD = 60
AUDIT_COPIED = (5, 50, 500)
AUDIT_BLANKS = 4
AUDIT_PAIRS = 24


@pytest.fixture(scope="session")
def audit_layout() -> dict[str, object]:
    """The layout of audit_shards (tests cannot import conftest reliably: tests/shards has one too)."""
    return {"hard": AUDIT_HARD, "copied": AUDIT_COPIED, "blanks": AUDIT_BLANKS, "pairs": AUDIT_PAIRS}


@pytest.fixture(scope="session")
def audit_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-written shard set for the audit: noisy digits with conditions and hardness, HPG-style pairs
    whose similarity falls over generator steps, exact copies of real training images, and blank images.

    Sample order: 60 hard samples, then AUDIT_PAIRS pairs (a, b), then the copies, then the blanks.
    """
    import numpy as np

    from synthkit.config import DataConfig
    from synthkit.data.sources import load_source
    from synthkit.shards import ShardSetWriter

    rng = np.random.default_rng(0)
    train = load_source(DataConfig(name="digits", size=16), "train").images.permute(0, 2, 3, 1).numpy()
    test = load_source(DataConfig(name="digits", size=16), "test").images.permute(0, 2, 3, 1).numpy()

    def noisy(im: np.ndarray, sigma: float) -> np.ndarray:
        return np.clip(im + rng.normal(0, sigma, im.shape), 0, 255).astype(np.uint8)

    out = tmp_path_factory.mktemp("audit") / "set"
    with ShardSetWriter(out, "audit", maxcount=50, manifest_fields={"producer": {"name": "test"}}) as w:
        for i in range(AUDIT_HARD):
            meta = {
                "kind": "hard",
                "producer": "test",
                "condition": i % 5,
                "condition_source": "kmeans",
                "condition_k": 5,
                "hardness": float(rng.uniform(4, 6)),
                "generator_step": 300,
            }
            w.write(f"hard_{i:04d}", noisy(test[i], 20), meta)
        for p in range(AUDIT_PAIRS):
            step = 100 * (p % 3)
            base = test[100 + p]
            for side, sigma in (("a", 5), ("b", 5 + step / 4)):
                meta = {
                    "kind": f"pair_{side}",
                    "producer": "test",
                    "pair_id": p,
                    "generator_step": step,
                    "pair_similarity": 0.9 - step / 1000,
                    "condition": p % 5,
                    "hardness": 5.0,
                }
                w.write(f"pair_{p:04d}_{side}", noisy(base, sigma), meta)
        for j, i in enumerate(AUDIT_COPIED):
            w.write(
                f"copy_{j:04d}",
                train[i],
                {"kind": "hard", "producer": "test", "condition": 0, "hardness": 5.0},
            )
        for j in range(AUDIT_BLANKS):
            blank = np.zeros_like(train[0])
            w.write(
                f"blank_{j:04d}", blank, {"kind": "hard", "producer": "test", "condition": 1, "hardness": 5.0}
            )
    return out
