"""`shards convert` (a real source -> a shard set) and `shards inspect` (what a set holds): API and CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthkit.cli import main
from synthkit.config import DataConfig, to_dict
from synthkit.data.convert import convert_source
from synthkit.data.inspect import inspect_grid, inspect_shard_set
from synthkit.data.sources import load_source
from synthkit.images import grid_height
from synthkit.shards import ShardSetExistsError, ShardSetWriter, read_manifest, verify_shard_set
from synthkit.shards.format import ShardError

DIGITS = DataConfig(name="digits", size=8, subset=40)


def read_plain(set_dir: Path) -> list[dict]:
    """Raw samples through plain webdataset only (the user's path), PNG decoded by PIL."""
    import webdataset as wds

    urls = [str(set_dir / s["name"]) for s in read_manifest(set_dir)["shards"]]
    rows = []
    for s in wds.WebDataset(urls, shardshuffle=False):
        image = Image.open(io.BytesIO(s["png"]))
        rows.append(
            {
                "key": s["__key__"],
                "mode": image.mode,
                "pixels": np.asarray(image),
                "meta": json.loads(s["json"]),
                "cls": int(s["cls"]) if "cls" in s else None,
            }
        )
    return rows


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the set (metadata tables under metadata/ included) with its bytes and mtime."""
    files = (p for p in sorted(directory.rglob("*")) if p.is_file())
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


@pytest.fixture(scope="module")
def digits_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("convert") / "digits"
    convert_source(DIGITS, "train", out, maxcount=16)
    return out


# --------------------------------------------------------------------------- convert


def test_convert_digits_reads_back_with_plain_webdataset(digits_set: Path) -> None:
    source = load_source(DIGITS, "train")
    rows = read_plain(digits_set)

    assert len(rows) == len(source) == 40
    assert [r["cls"] for r in rows] == source.labels.tolist()
    for row, image in zip(rows, source.images, strict=True):
        assert row["mode"] == "L"
        np.testing.assert_array_equal(row["pixels"], image[0].numpy())
        assert {k: row["meta"][k] for k in ("kind", "producer", "split")} == {
            "kind": "real",
            "producer": "convert:digits",
            "split": "train",
        }
    manifest = read_manifest(digits_set)
    assert [s["count"] for s in manifest["shards"]] == [16, 16, 8]
    assert manifest["config"] == to_dict(DIGITS)
    assert manifest["producer"] == {"name": "convert", "source": "digits", "split": "train"}
    assert set(manifest["created_by"]) >= {"synthkit", "git_commit"}
    assert manifest["seed"] == DIGITS.subset_seed
    assert verify_shard_set(digits_set).ok


def test_index_is_the_position_in_the_full_split(digits_set: Path) -> None:
    full = load_source(DataConfig(name="digits", size=8), "train")
    rows = read_plain(digits_set)
    indices = [r["meta"]["index"] for r in rows]
    assert indices == sorted(set(indices)) and indices[-1] < len(full)
    for row in rows:
        np.testing.assert_array_equal(row["pixels"], full.images[row["meta"]["index"], 0].numpy())
        assert row["cls"] == int(full.labels[row["meta"]["index"]])


def test_convert_twice_gives_byte_identical_shards(digits_set: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    convert_source(DIGITS, "train", again, maxcount=16)
    first = {name: data for name, (data, _) in snapshot(digits_set).items()}
    second = {name: data for name, (data, _) in snapshot(again).items()}
    assert first == second


def test_convert_rgb_test_split_ignores_subset(tmp_path: Path) -> None:
    cfg = DataConfig(name="digits", size=8, channels=3, subset=40)
    manifest = convert_source(cfg, "test", tmp_path / "rgb", maxcount=1000)
    source = load_source(cfg, "test")
    rows = read_plain(tmp_path / "rgb")

    assert manifest["total"] == len(rows) == len(source) > 40  # the subset applies to train only
    assert manifest["seed"] is None
    assert {r["mode"] for r in rows} == {"RGB"}
    np.testing.assert_array_equal(np.stack([r["pixels"] for r in rows]), source.images.permute(0, 2, 3, 1))
    assert [r["meta"]["index"] for r in rows] == list(range(len(source)))


def test_convert_into_an_existing_set_fails_and_leaves_it_untouched(digits_set: Path) -> None:
    before = snapshot(digits_set)
    with pytest.raises(ShardSetExistsError, match="already holds"):
        convert_source(DIGITS, "train", digits_set)
    assert snapshot(digits_set) == before


# --------------------------------------------------------------------------- inspect


def test_inspect_converted_set_counts_kinds_and_labels(digits_set: Path) -> None:
    summary = inspect_shard_set(digits_set)
    labels = load_source(DIGITS, "train").labels.numpy()
    histogram = {str(c): int(n) for c, n in enumerate(np.bincount(labels)) if n}

    assert summary["total"] == 40 and summary["shards"] == 3
    assert summary["by_kind"] == {"real": 40}
    assert summary["by_cls"] == histogram
    assert summary["by_condition"] == {} and summary["hardness"] is None
    assert summary["images"] == {"sizes": {"8x8": 40}, "modes": {"L": 40}}
    assert summary["grid"] is None
    json.dumps(summary)  # JSON-serialisable
    published = {s["name"] for s in read_manifest(digits_set)["shards"]} | {
        "manifest.json",
        "sizes.json",
        "metadata",
    }
    assert {p.name for p in digits_set.iterdir()} == published  # inspecting writes nothing into the set


@pytest.fixture
def hard_set(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """18 generated-looking samples: 3 conditions, hardness values, pairs with a similarity."""
    rng = np.random.default_rng(1)
    conditions = np.array([2, 0, 1] * 6)
    hardness = rng.normal(3.0, 0.5, size=18).round(6)
    out = tmp_path / "hard"
    with ShardSetWriter(out, "hard", maxcount=7, manifest_fields={"producer": {"name": "test"}}) as writer:
        for i in range(18):
            meta = {
                "kind": "pair_a" if i % 2 else "hard",
                "producer": "test",
                "condition": int(conditions[i]),
                "condition_source": "kmeans",
                "condition_k": 3,
                "hardness": float(hardness[i]),
            }
            if i % 2:
                meta |= {"pair_id": i, "pair_similarity": float(i) / 20}
            writer.write(f"h{i:03d}", rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), meta)
    return out, conditions, hardness


def test_inspect_summarises_hardness_and_conditions(hard_set: tuple[Path, np.ndarray, np.ndarray]) -> None:
    out, conditions, hardness = hard_set
    summary = inspect_shard_set(out)

    assert summary["by_kind"] == {"hard": 9, "pair_a": 9}
    assert summary["by_condition"] == {"0": 6, "1": 6, "2": 6}
    assert summary["by_cls"] == {}
    h = summary["hardness"]
    assert h["count"] == 18
    for key, want in [
        ("mean", hardness.mean()),
        ("std", hardness.std()),
        ("min", hardness.min()),
        ("max", hardness.max()),
        ("median", np.median(hardness)),
    ]:
        assert h[key] == pytest.approx(want), key
    assert [h["q25"], h["q75"]] == pytest.approx(np.percentile(hardness, [25, 75]).tolist())
    similarity = np.arange(1, 18, 2) / 20
    assert summary["pair_similarity"]["count"] == 9
    assert summary["pair_similarity"]["mean"] == pytest.approx(similarity.mean())
    assert summary["images"] == {"sizes": {"12x10": 18}, "modes": {"RGB": 18}}


def test_grid_has_one_row_per_condition(
    hard_set: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    out, _, _ = hard_set
    info = inspect_grid(out, tmp_path / "grid.png", per_row=4)
    grid = Image.open(tmp_path / "grid.png")
    h, scale = 12, 2  # labelled_grid's 2x upscale
    assert info["group_by"] == "condition" and info["rows"] == ["0", "1", "2"]
    # a panel per kind, in the set's order; the pair panel marks a and b (a line of its own)
    assert info["panels"] == ["hard samples", "positive pairs, a | b"]
    assert info["real"] is None and "no data source" in info["no_real_row"]  # this manifest names none
    assert grid.height == grid_height(3, h * scale, caption=True, pairs=True)
    assert grid.mode == "RGB"
    # asked for, a row of real images comes first, in a panel of its own
    real = inspect_grid(out, tmp_path / "real.png", per_row=4, real="digits")
    assert real["real"] == "digits" and real["panels"][0] == "real (digits)"
    assert Image.open(tmp_path / "real.png").height == grid_height(4, h * scale, caption=True, pairs=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "hard-000000.tar",
        "hard-000001.tar",
        "hard-000002.tar",
        "manifest.json",
        "metadata",  # the set's metadata tables (shards/tables.py)
        "sizes.json",
    ]


def test_grid_rows_by_cls_or_as_one_block(digits_set: Path, write_set, tmp_path: Path) -> None:
    by_cls = inspect_grid(digits_set, tmp_path / "cls.png", per_row=5)
    assert by_cls["group_by"] == "cls" and len(by_cls["rows"]) == len(inspect_shard_set(digits_set)["by_cls"])
    assert Image.open(tmp_path / "cls.png").height == grid_height(
        len(by_cls["rows"]), 8 * 2, caption=True, pairs=False
    )

    items = [
        (f"u{i}", np.full((6, 6), i * 20, np.uint8), {"kind": "sample", "producer": "t"}, None)
        for i in range(7)
    ]
    plain = write_set("plain", items=items)
    block = inspect_grid(plain, tmp_path / "block.png", per_row=3)
    assert block["group_by"] == "none" and len(block["rows"]) == 3  # 7 samples in rows of 3
    assert Image.open(tmp_path / "block.png").height == grid_height(3, 6 * 2, caption=True, pairs=False)


def test_grid_of_mixed_sizes_and_modes(write_set, tmp_path: Path) -> None:
    info = inspect_grid(write_set(), tmp_path / "mixed.png", per_row=3)  # conftest: sizes and modes vary
    assert info["rows"] == ["0", "1"]
    # the most common size (4 x 5) sets the tiles' height; hard samples and pair_a members: two panels
    assert info["panels"] == ["hard samples", "positive pairs, a | b"]
    assert Image.open(tmp_path / "mixed.png").height == grid_height(2, 4 * 2, caption=True, pairs=True)


def test_grid_is_never_written_inside_the_set(digits_set: Path) -> None:
    before = snapshot(digits_set)
    with pytest.raises(ShardError, match="inside the published shard set"):
        inspect_grid(digits_set, digits_set / "preview.png")
    assert snapshot(digits_set) == before


def test_inspect_refuses_a_directory_without_manifest(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    with pytest.raises(ShardError, match="no manifest.json"):
        inspect_shard_set(tmp_path / "half")


# --------------------------------------------------------------------------- CLI


def test_cli_convert_then_inspect_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["--data", "digits", "--size", "8", "--subset", "24", "--out", str(out), "--no-progress"]
    assert main(["shards", "convert", *args, "--name", "dg", "--maxcount", "10"]) == 0
    assert "wrote 24 digits train images in 3 shards" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.tar")) == ["dg-000000.tar", "dg-000001.tar", "dg-000002.tar"]

    assert main(["shards", "inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total"] == 24 and summary["by_kind"] == {"real": 24}
    assert sum(summary["by_cls"].values()) == 24

    assert main(["shards", "inspect", str(out), "--grid", str(tmp_path / "g.png")]) == 0
    text = capsys.readouterr().out
    assert "kind       real: 24" in text and "by cls" in text
    assert (tmp_path / "g.png").is_file()


def test_cli_convert_into_existing_set_exits_2(digits_set: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(digits_set)
    assert main(["shards", "convert", "--data", "digits", "--size", "8", "--out", str(digits_set)]) == 2
    assert "already holds" in capsys.readouterr().err
    assert snapshot(digits_set) == before


def test_cli_inspect_without_manifest_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    half = tmp_path / "half-written"
    half.mkdir()
    (half / "hard-000000.tar").write_bytes(b"")
    assert main(["shards", "inspect", str(half)]) == 2
    err = capsys.readouterr().err
    assert str(half) in err and "manifest" in err
