"""A new user's first hour: a folder of their own images, seeds out of range, sizes that match.

Each mistake is one line and exit 2 before anything is written; the documented bring-your-own-folder path
(README, "Bring your own image folder") runs as written on a small folder the test makes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from synthkit.cli import main
from synthkit.config import DataConfig, load_pipeline
from synthkit.data.convert import TRAINING_SIZES
from synthkit.data.sources import DataSourceError, check_source, load_source
from synthkit.errors import ConfigError
from synthkit.logs import error_lines

ROOT = Path(__file__).resolve().parents[2]
FOLDER = str(ROOT / "pipelines" / "folder.yaml")
# the folder pipeline at toy sizes, so the documented commands run in seconds
SMALL = [
    "--encoder.width=8",
    "--encoder.proj_hidden=32",
    "--encoder.proj_dim=16",
    "--generator.g_channels=8",
    "--generator.d_channels=8",
    "--generator.pretrain_steps=2",
    "--conditions.k=2",
    "--hsg.warmup_epochs=1",
    "--hsg.ramp_epochs=1",
    "--train.epochs=2",
    "--train.batch_size=16",
    "--train.knn_every=1",
    "--train.knn_k=5",
    "--train.trackers=[]",
]


def _one_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = error_lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1, (code, err)
    return err[0]


def _folder(root: Path, modes: dict[str, list[str]], per_class: int = 12, side: int = 20) -> Path:
    """``root/SPLIT/CLASS/i.png`` for the splits in ``modes``; each class a bright bar at its own place; the
    images' PIL modes cycle through the split's list (e.g. ``["L", "RGB"]`` mixes them)."""
    rng = np.random.default_rng(0)
    for split, split_modes in modes.items():
        for c, cls in enumerate(("bars", "dots")):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                x = rng.integers(0, 40, (side, side)).astype(np.uint8)
                x[:, 4 + 10 * c : 8 + 10 * c] = 230
                im = Image.fromarray(x)
                mode = split_modes[i % len(split_modes)]
                (im.convert("RGB") if mode == "RGB" else im).save(root / split / cls / f"{i}.png")
    return root


# --------------------------------------------------------------------------- generate --seed


@pytest.mark.parametrize("seed", [str(2**64), str(2**63), "-1"])
def test_generate_seed_out_of_range_is_one_line_before_work(
    seed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the run does not even exist: the seed is refused while the arguments are read
    argv = ["generate", "--run", str(tmp_path / "no-run"), "--out", str(tmp_path / "s"), "--seed", seed]
    line = _one_error(capsys, argv)
    assert "--seed" in line and "2**63" in line and seed in line
    assert not (tmp_path / "s").exists()
    with pytest.raises(ConfigError, match="export.seed"):
        load_pipeline(ROOT / "pipelines" / "tiny.yaml", [f"--export.seed={seed}"])


def test_the_largest_seed_exports(trained_run: Path, tmp_path: Path, capsys) -> None:
    """2**63 - 1 is a valid seed: every seed derived from it (chunks, views) stays in torch's range."""
    out = tmp_path / "s"
    argv = ["generate", "--run", str(trained_run), "--out", str(out), "--n", "4", "--no-progress"]
    assert main([*argv, "--seed", str(2**63 - 1), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["total"] == 4 and json.loads((out / "manifest.json").read_text())["total"] == 4


# --------------------------------------------------------------------------- a folder's channel mode


def test_splits_that_disagree_in_channel_mode_are_one_line_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's folder: train/ mixes RGB and grayscale (read as RGB), test/ is grayscale (one channel)."""
    data = _folder(tmp_path / "imgs", {"train": ["L", "RGB", "L"], "test": ["L"]})
    run = tmp_path / "x"
    line = _one_error(capsys, ["train", FOLDER, f"--data.root={data}", "--out", str(run), *SMALL])
    assert "channel modes" in line and "--data.channels=1" in line and "--data.channels=3" in line
    assert "train/ is RGB (8 of 24 images in colour)" in line and "test/ is grayscale" in line
    assert not run.exists()
    # the explicit setting converts both splits alike
    for channels in (1, 3):
        cfg = DataConfig(name="folder", root=str(data), size=12, channels=channels)
        shapes = {split: tuple(load_source(cfg, split).images.shape[1:]) for split in ("train", "test")}
        assert shapes == {"train": (channels, 12, 12), "test": (channels, 12, 12)}
    # and loading one split alone refuses the mismatch too (eval, audit, the Python API)
    with pytest.raises(DataSourceError, match="channel modes"):
        load_source(DataConfig(name="folder", root=str(data), size=12), "test")


def test_a_mixed_split_is_read_as_rgb_when_both_splits_have_colour(tmp_path: Path) -> None:
    data = _folder(tmp_path / "imgs", {"train": ["L", "RGB"], "test": ["RGB", "L", "L"]})
    cfg = DataConfig(name="folder", root=str(data), size=12)
    check_source(cfg)
    train, test = load_source(cfg, "train"), load_source(cfg, "test")
    assert train.images.shape[1] == test.images.shape[1] == 3
    gray = train.images[0]  # bars/0.png, a grayscale file: repeated into three equal channels
    assert bool((gray[0] == gray[1]).all() and (gray[1] == gray[2]).all())


def test_a_labeled_folder_without_test_split_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _folder(tmp_path / "imgs", {"train": ["L"]}) / "train"  # class folders, no train/ and test/
    run = tmp_path / "x"
    line = _one_error(capsys, ["train", FOLDER, f"--data.root={data}", "--out", str(run), *SMALL])
    assert "no train/ and test/" in line and "--train.knn_every=0" in line
    assert not run.exists()
    check_source(DataConfig(name="folder", root=str(data)), test=False)  # fine without the monitor


def test_an_unreadable_test_image_is_one_line_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _folder(tmp_path / "imgs", {"train": ["L"], "test": ["L"]})
    (data / "test" / "dots" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    run = tmp_path / "x"
    line = _one_error(capsys, ["train", FOLDER, f"--data.root={data}", "--out", str(run), *SMALL])
    assert "cannot read image" in line and "3.png" in line
    assert not run.exists()


# --------------------------------------------------------------------------- shards convert's size


def test_convert_defaults_to_the_size_the_pipelines_train_at() -> None:
    """Every shipped pipeline trains its source at TRAINING_SIZES[source], the default of `shards convert`."""
    for path in sorted((ROOT / "pipelines").glob("*.yaml")):
        cfg = load_pipeline(path, [])
        assert cfg.data.size == TRAINING_SIZES[cfg.data.name], path.name


def test_the_documented_folder_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README, "Bring your own image folder": train, convert at the run's size, mix, generate, eval."""
    data = _folder(tmp_path / "imgs", {"train": ["RGB"], "test": ["RGB"]}, per_class=16, side=36)
    run, real, syn = tmp_path / "run", tmp_path / "real", tmp_path / "syn"
    assert main(["train", FOLDER, f"--data.root={data}", "--out", str(run), "--no-progress", *SMALL]) == 0
    assert "trained 2 epochs" in capsys.readouterr().out
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["size"] == 28

    # converted with the pipeline's data section: 28 px RGB without a --size
    convert = ["shards", "convert", "--root", str(data), "--no-progress"]
    assert main([*convert, "--pipeline", FOLDER, "--out", str(real)]) == 0
    assert "28x28 px" in capsys.readouterr().out
    im = _first_png(real)
    assert im.size == (28, 28) and im.mode == "RGB"
    # without --pipeline, the folder source's own default size is the same
    assert main([*convert, "--data", "folder", "--out", str(tmp_path / "r2")]) == 0
    assert "28x28 px" in capsys.readouterr().out

    assert main(["generate", "--run", str(run), "--out", str(syn), "--n", "16", "--no-progress"]) == 0
    capsys.readouterr()
    # the converted real set and the samples mix at the run's size
    mix = [
        "--hsg.enabled=false",
        "--generator.pretrain_steps=0",
        "--data",
        f"real={real}:0.75",
        "--data",
        f"syn={syn}:0.25",
    ]
    assert main(["train", FOLDER, f"--data.root={data}", "--out", str(tmp_path / "mix"), *SMALL, *mix]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--knn-k", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["train_images"] == 32 and res["test_images"] == 32


def _first_png(shards: Path) -> Image.Image:
    import io
    import tarfile

    with tarfile.open(sorted(shards.glob("*.tar"))[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".png"))
        data = tar.extractfile(member)
        assert data is not None
        return Image.open(io.BytesIO(data.read()))
