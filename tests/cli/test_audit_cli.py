"""``synthkit audit`` and ``synthkit audit train-extractor`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthkit.cli import EXIT_USAGE, main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_audit_writes_the_report_and_prints_the_metrics(
    audit_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit"
    code, text, _ = _run(
        capsys,
        "audit",
        str(audit_shards),
        "--real",
        "digits",
        "--out",
        str(out),
        "--extractor",
        "pixels",
        "--no-progress",
    )
    assert code == 0
    assert "extractor pixels:16x16x1" in text and "fid" in text and "report.html" in text
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["extractor"] == "pixels" and (out / "report.html").is_file()


def test_train_extractor_then_audit_with_it(
    audit_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clf = tmp_path / "clf"
    code, text, _ = _run(
        capsys,
        "audit",
        "train-extractor",
        "--data",
        "digits",
        "--size",
        "16",
        "--epochs",
        "1",
        "--out",
        str(clf),
        "--no-progress",
    )
    assert code == 0 and "test accuracy" in text
    sha = json.loads((clf / "extractor.json").read_text())["sha256"]
    code, text, _ = _run(
        capsys,
        "audit",
        str(audit_shards),
        "--real",
        "digits",
        "--out",
        str(tmp_path / "a"),
        "--classifier",
        str(clf),
        "--json",
        "--no-progress",
    )
    assert code == 0
    metrics = json.loads(text)["metrics"]
    assert metrics["fid"]["extractor"] == f"classifier:{sha[:12]}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--real", "nowhere", "--extractor", "pixels"], "neither a shard set directory nor a known source"),
        (["--real", "digits", "--extractor", "encoder"], "needs a run directory"),
        (["--real", "digits", "--extractor", "inception"], "never downloads"),
        (["--real", "digits", "--classifier", "/nonexistent"], "holds no trained classifier"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    audit_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = _run(capsys, "audit", str(audit_shards), "--out", str(tmp_path / "o"), *args)
    assert code == EXIT_USAGE
    assert message in err and err.count("\n") == 1


def test_without_an_extractor_the_default_feature_space_is_chosen_and_named(
    audit_shards: Path, trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a set that names no run: pixels
    code, text, _ = _run(capsys, "audit", str(audit_shards), "--real", "digits", "--out", str(tmp_path / "p"))
    assert code == 0 and "extractor pixels:16x16x1 (default: pixels" in text
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["extractor"]["kind"] == "pixels" and report["extractor"]["chosen_by"].startswith("default")
    assert report["config"]["extractor"] == "auto"
    # a set made by a run on this machine: that run's encoder, which the report names
    shards = tmp_path / "set"
    assert (
        main(["generate", "--run", str(trained_run), "--out", str(shards), "--n", "24", "--no-progress"]) == 0
    )
    capsys.readouterr()
    code, text, _ = _run(capsys, "audit", str(shards), "--real", "digits", "--out", str(tmp_path / "e"))
    assert code == 0
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["extractor"]["kind"] == "encoder"
    assert str(trained_run.resolve()) in report["extractor"]["chosen_by"]
    assert f"extractor {report['extractor']['id']} (default: the encoder of the run" in text
    assert "chosen by" in (tmp_path / "e" / "report.html").read_text()


def test_a_directory_that_is_not_a_set_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(
        capsys,
        "audit",
        str(tmp_path),
        "--real",
        "digits",
        "--extractor",
        "pixels",
        "--out",
        str(tmp_path.parent / "o"),
    )
    assert code == EXIT_USAGE and "manifest.json" in err
