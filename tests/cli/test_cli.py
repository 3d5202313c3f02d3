"""The command line end to end, and the errors users see for bad input."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from synthkit.cli import main
from synthkit.images import grid_height


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_end_to_end_console_script(tiny_pipeline: Path, tmp_path: Path) -> None:
    """train -> generate -> verify -> eval through the installed `synthkit` script."""
    run, shards = tmp_path / "run", tmp_path / "shards"
    exe = shutil.which("synthkit")
    assert exe, "the synthkit console script is not installed"

    def sh(*args: str) -> str:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    assert "trained 2 epochs" in sh("train", str(tiny_pipeline), "--out", str(run), "--no-progress")
    assert "wrote 40 samples in 3 shards" in sh(
        "generate", "--run", str(run), "--n", "40", "--seed", "3", "--out", str(shards), "--no-progress"
    )
    assert "OK (40 samples in 3 shards)" in sh("shards", "verify", str(shards))
    res = json.loads(sh("eval", "--run", str(run), "--json"))
    assert 0.0 <= res["knn_accuracy"] <= 1.0 and 0.0 <= res["linear_accuracy"] <= 1.0
    assert res["data"] == "digits" and res["train_images"] == 256 and res["test_images"] == 360

    # plain webdataset reads the set: nothing from synthkit in this read path
    urls = sorted(str(p) for p in shards.glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False).to_tuple("__key__", "png", "json"))
    assert len(samples) == 40
    keys = [k for k, _, _ in samples]
    assert len(set(keys)) == 40 and all("." not in k for k in keys)
    for _, png, meta_bytes in samples:
        img = Image.open(io.BytesIO(png))
        assert img.size == (16, 16) and img.mode == "L"
        meta = json.loads(meta_bytes)
        assert meta["kind"] == "hard" and meta["producer"] == "hsg-cgan"
        assert meta["condition_source"] == "kmeans" and 0 <= meta["condition"] < 3
        assert meta["hardness"] > 0 and meta["seed"] == 3
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["total"] == 40 and manifest["producer"]["hashes"]["generator_ema"]
    assert json.loads((shards / "sizes.json").read_text()) == {
        s["name"]: s["count"] for s in manifest["shards"]
    }


def test_generate_is_byte_identical_for_same_seed(trained_run: Path, tmp_path: Path, capsys) -> None:
    for d, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        code, _, err = _run(
            capsys,
            "generate",
            "--run",
            str(trained_run),
            "--n",
            "40",
            "--seed",
            seed,
            "--out",
            str(tmp_path / d),
            "--no-progress",
        )
        assert code == 0, err
    tars = {d: sorted((tmp_path / d).glob("*.tar")) for d in "abc"}
    assert [p.name for p in tars["a"]] == [p.name for p in tars["b"]]
    for pa, pb in zip(tars["a"], tars["b"], strict=True):
        assert pa.read_bytes() == pb.read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    assert tars["a"][0].read_bytes() != tars["c"][0].read_bytes()


def test_generate_same_request_again_is_a_no_op(trained_run: Path, tmp_path: Path, capsys) -> None:
    args = [
        "generate",
        "--run",
        str(trained_run),
        "--n",
        "20",
        "--seed",
        "1",
        "--out",
        str(tmp_path / "s"),
        "--no-progress",
    ]
    assert _run(capsys, *args)[0] == 0
    before = (tmp_path / "s" / "manifest.json").read_bytes()
    code, out, _ = _run(capsys, *args)
    assert code == 0 and "already holds this exact shard set" in out
    assert (tmp_path / "s" / "manifest.json").read_bytes() == before


def test_generate_refuses_a_different_set_in_the_way(trained_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    assert (
        _run(
            capsys,
            "generate",
            "--run",
            str(trained_run),
            "--n",
            "20",
            "--seed",
            "1",
            "--out",
            str(out),
            "--no-progress",
        )[0]
        == 0
    )
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = _run(
        capsys,
        "generate",
        "--run",
        str(trained_run),
        "--n",
        "30",
        "--seed",
        "1",
        "--out",
        str(out),
        "--no-progress",
    )
    assert code == 2 and "already holds a different shard set" in err
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_generate_reruns_its_own_interrupted_export(trained_run: Path, tmp_path: Path, capsys) -> None:
    ref, out = tmp_path / "ref", tmp_path / "s"
    args = ["--run", str(trained_run), "--n", "40", "--seed", "2", "--no-progress", "--name", "synthkit"]
    assert _run(capsys, "generate", *args, "--out", str(ref))[0] == 0
    assert _run(capsys, "generate", *args, "--out", str(out))[0] == 0
    # simulate a kill after the first shard: manifest and later shards never published
    for p in ("manifest.json", "sizes.json", "synthkit-000001.tar", "synthkit-000002.tar"):
        (out / p).unlink()
    request = json.loads((ref / "manifest.json").read_text())["request"]
    (out / ".export-in-progress.json").write_text(json.dumps(request, sort_keys=True))
    assert _run(capsys, "generate", *args, "--out", str(out))[0] == 0
    for p in sorted(ref.glob("*.tar")):
        assert (out / p.name).read_bytes() == p.read_bytes()


def test_generate_refuses_foreign_leftover_shards(trained_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    out.mkdir()
    (out / "synthkit-000000.tar").write_bytes(b"not ours")
    code, _, err = _run(
        capsys,
        "generate",
        "--run",
        str(trained_run),
        "--n",
        "20",
        "--out",
        str(out),
        "--no-progress",
        "--name",
        "synthkit",
    )
    assert code == 2 and "without a manifest" in err
    assert (out / "synthkit-000000.tar").read_bytes() == b"not ours"


@pytest.mark.parametrize("victim", ["generator_ema.safetensors", "encoder.safetensors", "final.json"])
def test_generate_and_eval_refuse_truncated_weights(
    trained_run: Path, tmp_path: Path, capsys, victim
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    target = run / "final" / victim
    target.write_bytes(target.read_bytes()[: max(1, target.stat().st_size // 3)])
    code, _, err = _run(
        capsys, "generate", "--run", str(run), "--n", "10", "--out", str(tmp_path / "s"), "--no-progress"
    )
    assert code == 2 and victim in err and "truncated" in err
    assert not (tmp_path / "s").exists()
    code, _, err = _run(capsys, "eval", "--run", str(run))
    assert code == 2 and victim in err


def test_generate_refuses_a_run_without_generator(tmp_path: Path, tiny_pipeline: Path, capsys) -> None:
    run = tmp_path / "plain"
    assert (
        _run(
            capsys,
            "train",
            str(tiny_pipeline),
            "--out",
            str(run),
            "--no-progress",
            "--hsg.enabled=false",
            "--train.epochs=1",
        )[0]
        == 0
    )
    code, _, err = _run(capsys, "generate", "--run", str(run), "--out", str(tmp_path / "s"), "--no-progress")
    assert code == 2 and "without HSG" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--train.epoch=3", "unknown key train.epoch"),
        ("--trainn.epochs=3", "unknown key trainn"),
        ("--train.epochs=three", "train.epochs: expected an integer"),
        ("--train.lr=-1", "train.lr: must be > 0"),
        ("--hsg.enabled=maybe", "hsg.enabled: expected true or false"),
        ("--data.name=imagenet", "data.name: 'imagenet' is not one of"),
    ],
)
def test_train_config_errors_name_the_key_and_write_nothing(
    tiny_pipeline: Path, tmp_path: Path, capsys, override: str, message: str
) -> None:
    run = tmp_path / "run"
    code, _, err = _run(capsys, "train", str(tiny_pipeline), "--out", str(run), override)
    assert code == 2 and message in err
    assert not run.exists()


def test_train_missing_data_root_is_explained(tiny_pipeline: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    code, _, err = _run(
        capsys,
        "train",
        str(tiny_pipeline),
        "--out",
        str(run),
        "--data.name=fashion-mnist",
        f"--data.root={tmp_path / 'nowhere'}",
    )
    assert code == 2 and "dataset-fashion-mnist" in err and "--data.root" in err
    assert not run.exists()


def test_malformed_pipeline_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    code, _, err = _run(capsys, "train", str(bad), "--out", str(tmp_path / "run"))
    assert code == 2 and "bad.yaml" in err and "not valid YAML" in err


def test_shards_verify_reports_damage(trained_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    assert (
        _run(capsys, "generate", "--run", str(trained_run), "--n", "20", "--out", str(out), "--no-progress")[
            0
        ]
        == 0
    )
    shard = sorted(out.glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, _, err = _run(capsys, "shards", "verify", str(out))
    assert code == 1 and shard.name in err and "sha256" in err


def test_preview_grid_has_one_row_per_condition(trained_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    assert (
        _run(capsys, "generate", "--run", str(trained_run), "--n", "40", "--out", str(out), "--no-progress")[
            0
        ]
        == 0
    )
    grid = np.asarray(Image.open(out / "preview.png"))
    urls = sorted(str(p) for p in out.glob("*.tar"))
    conds = {json.loads(m)["condition"] for (m,) in wds.WebDataset(urls, shardshuffle=False).to_tuple("json")}
    # a labelled row per condition (hard samples only: no pair marks), with the 16 px tiles upscaled 2x
    assert grid.shape[0] == grid_height(len(conds), 16 * 2, caption=True, pairs=False)


def test_rgb_pipeline_trains_and_exports_rgb(tiny_pipeline: Path, tmp_path: Path, capsys) -> None:
    run, out = tmp_path / "rgb", tmp_path / "s"
    code, _, err = _run(
        capsys,
        "train",
        str(tiny_pipeline),
        "--out",
        str(run),
        "--no-progress",
        "--data.channels=3",
        "--train.epochs=2",
    )
    assert code == 0, err
    assert _run(capsys, "generate", "--run", str(run), "--n", "8", "--out", str(out), "--no-progress")[0] == 0
    urls = sorted(str(p) for p in out.glob("*.tar"))
    images = [
        Image.open(io.BytesIO(png)) for (png,) in wds.WebDataset(urls, shardshuffle=False).to_tuple("png")
    ]
    assert len(images) == 8 and all(im.mode == "RGB" and im.size == (16, 16) for im in images)
    res = json.loads(_run(capsys, "eval", "--run", str(run), "--json")[1])
    assert 0.0 <= res["linear_accuracy"] <= 1.0


def test_convert_with_a_pipeline_takes_its_data_section_under_the_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``shards convert --pipeline P`` reads P's data section and puts the flags given over it: the same set,
    byte for byte, as naming that section with flags alone; a --data of another source is refused."""
    quickstart = str(Path(__file__).resolve().parents[2] / "pipelines" / "quickstart.yaml")  # digits, 16 px
    common = ["--subset", "24", "--subset-seed", "3", "--maxcount", "10", "--json", "--no-progress"]
    a, b = tmp_path / "a", tmp_path / "b"
    code, out, _ = _run(capsys, "shards", "convert", "--pipeline", quickstart, "--out", str(a), *common)
    assert code == 0 and json.loads(out)["total"] == 24
    code, out, _ = _run(
        capsys, "shards", "convert", "--data", "digits", "--size", "16", "--out", str(b), *common
    )
    assert code == 0
    assert (
        json.loads((a / "manifest.json").read_text())["shards"]
        == json.loads((b / "manifest.json").read_text())["shards"]
    )
    code, _, err = _run(
        capsys,
        "shards",
        "convert",
        "--pipeline",
        quickstart,
        "--data",
        "cifar10",
        "--out",
        str(tmp_path / "c"),
    )
    assert code == 2 and "--data cifar10 differs from" in err and "data.name digits" in err
    assert not (tmp_path / "c").exists()
