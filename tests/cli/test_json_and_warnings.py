"""``--json`` on every command that reports something, and the warnings a researcher needs (kNN k too large
for the train split)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from synthkit.cli import main
from synthkit.shards import read_manifest

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "pipelines" / "tiny.yaml")


def _json(capsys, *argv: str) -> dict:
    code = main(list(argv))
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)  # stdout is one JSON document and nothing else


def test_train_generate_verify_convert_index_config_print_json(
    trained_run: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    res = _json(capsys, "train", TINY, "--out", str(run), "--no-progress", "--json", "--train.epochs=1")
    assert res["run_dir"] == str(run) and res["epochs"] == 1 and res["steps"] == 4 and "hashes" in res
    assert res["last_epoch"]["epoch"] == 1

    out = tmp_path / "set"
    res = _json(capsys, "generate", "--run", str(trained_run), "--out", str(out), "--n", "8", "--json")
    manifest = read_manifest(out)
    assert (res["name"], res["total"], res["shards"]) == (manifest["name"], 8, len(manifest["shards"]))
    assert res["reused"] is False and res["metadata_tables"]["count"] == len(manifest["shards"])
    again = _json(capsys, "generate", "--run", str(trained_run), "--out", str(out), "--n", "8", "--json")
    assert again["reused"] is True and again["hardness"] is None

    res = _json(capsys, "shards", "verify", str(out), "--json")
    assert res == {"dir": str(out), "ok": True, "total": 8, "shards": len(manifest["shards"]), "problems": []}
    (out / manifest["shards"][0]["name"]).write_bytes(b"broken")
    assert main(["shards", "verify", str(out), "--json"]) == 1  # problems: exit 1, still JSON
    broken = json.loads(capsys.readouterr().out)
    assert broken["ok"] is False and broken["problems"]

    conv = tmp_path / "digits"
    res = _json(capsys, "shards", "convert", "--data", "digits", "--size", "8", "--split", "test",
                "--out", str(conv), "--json")  # fmt: skip
    assert res["total"] == 360 and res["name"].endswith("-test") and res["classes"] is not None

    res = _json(capsys, "shards", "index", str(conv), "--json")
    assert res["index"] == str(conv / "wids-index.json") and res["samples"] == 360
    assert json.loads((conv / "wids-index.json").read_text())["__kind__"] == "wids-shard-index-v1"

    res = _json(capsys, "config", TINY, "--json", "--train.epochs=3")
    assert res["train"]["epochs"] == 3 and res["train"]["trackers"] == ["auto"]


def test_eval_warns_when_knn_k_exceeds_the_images_per_class(trained_run: Path, capsys, caplog) -> None:
    with caplog.at_level("WARNING"):
        res = _json(capsys, "eval", "--run", str(trained_run), "--json")
    # the tiny run: 256 training images of 10 digits, eval.knn_k 200
    assert res["knn_k"] == 200 and "exceeds twice the 25 training images per class" in res["knn_warning"]
    assert "eval.knn_k=200 exceeds" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        res = _json(capsys, "eval", "--run", str(trained_run), "--json", "--knn-k", "20")
    assert res["knn_k"] == 20 and res["knn_warning"] is None and "exceeds" not in caplog.text


def test_the_training_monitor_warns_once(tmp_path: Path, caplog) -> None:
    with caplog.at_level("WARNING"):
        assert main(["train", TINY, "--out", str(tmp_path / "r"), "--no-progress", "--train.knn_k=200"]) == 0
    warnings = [r for r in caplog.records if "train.knn_k=200 exceeds" in r.getMessage()]
    assert len(warnings) == 1  # once per run, not once per epoch


@pytest.mark.slow
def test_quickstart_json(tmp_path: Path, capsys) -> None:
    res = _json(capsys, "quickstart", "--out", str(tmp_path / "q"), "--json", "--no-progress",
                "--train.epochs=1", "--export.n=20", "--generator.pretrain_steps=4")  # fmt: skip
    assert res["samples"] == 20 and res["verified"] is True and "text" not in res
    # the pre-trained GAN is the HSG run's start and the naive set's generator; the comparison shows both
    assert res["pretrain_steps"] == 4 and Path(res["naive_dir"], "manifest.json").is_file()
    config = yaml.safe_load(Path(res["run_dir"], "config.yaml").read_text())
    assert config["generator"]["init_run"] == res["gan_dir"] and config["generator"]["pretrain_steps"] == 0
    assert Path(res["comparison"]).is_file() and Path(res["grid"]).is_file()
