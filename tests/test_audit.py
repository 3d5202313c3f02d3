"""The audit end to end on a hand-written shard set: planted copies, blanks and pairs are all found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthkit.audit import REPORT_HTML, REPORT_JSON, AuditError, audit
from synthkit.config import AuditConfig
from synthkit.shards import ShardSetWriter

FAST = AuditConfig(extractor="pixels", kid_subsets=10, kid_subset_size=50)


@pytest.fixture(scope="module")
def pixel_report(audit_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("audit-out")
    return audit(audit_shards, "digits", out, config=FAST), out


def test_report_files_are_written_and_match(pixel_report: tuple[dict, Path]) -> None:
    report, out = pixel_report
    assert json.loads((out / REPORT_JSON).read_text()) == json.loads(json.dumps(report))
    assert (out / REPORT_HTML).stat().st_size > 10_000
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_every_score_names_its_extractor(pixel_report: tuple[dict, Path]) -> None:
    report, _ = pixel_report
    assert report["extractor"]["id"] == "pixels:16x16x1"
    feature_metrics = {
        "fid",
        "kid_mean",
        "precision",
        "recall",
        "density",
        "coverage",
        "memorisation_suspects",
    }
    assert feature_metrics <= set(report["metrics"])
    for name, m in report["metrics"].items():
        assert "extractor" in m, name
        if name in feature_metrics:
            assert m["extractor"] == "pixels:16x16x1"
    assert report["metrics"]["broken"]["extractor"] is None


def test_planted_copies_are_memorisation_suspects(
    pixel_report: tuple[dict, Path], audit_layout: dict
) -> None:
    report, _ = pixel_report
    first_copy = audit_layout["hard"] + 2 * audit_layout["pairs"]
    suspects = {(s["fake_index"], s["real_index"]) for s in report["details"]["memorisation"]["suspects"]}
    assert {(first_copy + j, i) for j, i in enumerate(audit_layout["copied"])} <= suspects


def test_planted_blanks_are_broken(pixel_report: tuple[dict, Path], audit_layout: dict) -> None:
    report, _ = pixel_report
    blanks = audit_layout["blanks"]
    first_blank = audit_layout["hard"] + 2 * audit_layout["pairs"] + len(audit_layout["copied"])
    b = report["details"]["broken"]
    assert b["constant"] == blanks and report["metrics"]["broken"]["value"] == blanks
    assert b["indices"]["constant"] == list(range(first_blank, first_blank + blanks))


def test_pairs_and_their_trend(pixel_report: tuple[dict, Path], audit_layout: dict) -> None:
    report, _ = pixel_report
    pairs = report["details"]["pairs"]
    assert pairs["count"] == audit_layout["pairs"]
    assert pairs["recorded_similarity"]["trend"]["decreasing"] is True
    assert [p["step"] for p in pairs["feature_similarity"]["per_step"]] == [0, 100, 200]
    # more noise on pair_b at later steps: the pixel-space similarity falls too
    assert pairs["feature_similarity"]["trend"]["decreasing"] is True
    assert 0 < report["metrics"]["alignment_pairs"]["value"] < 2


def test_conditions_classes_and_fidelity(pixel_report: tuple[dict, Path]) -> None:
    report, _ = pixel_report
    cond = report["details"]["condition_coverage"]
    assert cond["num_conditions"] == 5 and cond["conditions_seen"] == 5
    classes = report["details"]["class_coverage"]
    assert classes["num_classes"] == 10 and classes["classes_generated"] >= 8
    m = report["metrics"]
    assert 0.5 < m["precision"]["value"] <= 1 and 0 < m["coverage"]["value"] < 1
    assert report["real"] == {
        "kind": "source",
        "name": "digits",
        "root": None,
        "split": "train",
        "size": 16,
        "count": 1437,
        "labels": True,
    }


def test_a_set_against_itself_scores_like_itself(audit_shards: Path, tmp_path: Path) -> None:
    report = audit(audit_shards, str(audit_shards), tmp_path / "self", config=FAST)
    m = report["metrics"]
    assert abs(m["fid"]["value"]) < 1e-4  # rank-deficient covariances (115 points, 256-D): rounding only
    assert m["precision"]["value"] == 1.0 and m["coverage"]["value"] == 1.0
    assert report["real"]["kind"] == "shards" and "class_coverage" not in report["details"]


def test_bad_inputs_are_clear_errors(audit_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="neither a shard set directory nor a known source"):
        audit(audit_shards, "no-such-data", tmp_path / "a", config=FAST)
    with pytest.raises(AuditError, match="inside|into the shard set"):
        audit(audit_shards, "digits", audit_shards / "report", config=FAST)
    mixed = tmp_path / "mixed"
    import numpy as np

    with ShardSetWriter(mixed, "mixed", manifest_fields={}) as w:
        for i in range(8):
            side = 16 if i % 2 else 12
            w.write(f"s{i}", np.full((side, side, 1), 40 + i, np.uint8), {"kind": "sample", "producer": "t"})
    with pytest.raises(AuditError, match="mixed sizes"):
        audit(mixed, "digits", tmp_path / "b", config=FAST)


def test_other_sizes_are_converted_explicitly(audit_shards: Path, fashion_root: Path, tmp_path: Path) -> None:
    cfg = AuditConfig(extractor="pixels", kid_subsets=5, kid_subset_size=30, max_real=300)
    # 28 px real (idx files written by the fixture) vs 16 px samples
    report = audit(audit_shards, "fashion-mnist", tmp_path / "fm", config=cfg, real_root=str(fashion_root))
    assert report["real"]["size"] == 16 and report["real"]["count"] == 300  # loaded at the extractor's size
    assert report["conversions"] == {"synthetic": None, "real": None}


@pytest.mark.slow
def test_encoder_extractor_and_recomputed_hardness(
    audit_shards: Path, trained_run: Path, tmp_path: Path
) -> None:
    cfg = AuditConfig(extractor="encoder", kid_subsets=5, kid_subset_size=50)
    report = audit(audit_shards, "digits", tmp_path / "enc", config=cfg, encoder_run=trained_run)
    final = json.loads((trained_run / "final" / "final.json").read_text())
    assert report["extractor"]["sha256"] == final["hashes"]["encoder"]
    assert report["metrics"]["fid"]["extractor"] == report["extractor"]["id"]
    hard = report["details"]["hardness"]["encoder"]
    assert hard["count"] == report["shards"]["audited"] and hard["extractor"] == report["extractor"]["id"]


@pytest.mark.slow
def test_extractor_encoder_alone_uses_the_run_that_made_the_set(trained_run: Path, tmp_path: Path) -> None:
    from synthkit.cli import main

    shards = tmp_path / "set"
    assert (
        main(["generate", "--run", str(trained_run), "--out", str(shards), "--n", "24", "--no-progress"]) == 0
    )
    cfg = AuditConfig(extractor="encoder", kid_subsets=5, kid_subset_size=10)
    report = audit(shards, "digits", tmp_path / "enc", config=cfg)  # no encoder_run: the manifest's run
    final = json.loads((trained_run / "final" / "final.json").read_text())
    assert report["extractor"]["sha256"] == final["hashes"]["encoder"]
    assert str(trained_run.resolve()) in report["extractor"]["chosen_by"]
    assert report["details"]["hardness"]["encoder"]["count"] == 24  # and hardness under that encoder
    quality = report["reference"]["extractor_quality"]
    assert quality["kind"] == "encoder" and 0 <= quality["knn_accuracy"] <= 1
    with pytest.raises(AuditError, match="needs a run directory"):  # a set that names no run
        audit(_no_run_set(tmp_path), "digits", tmp_path / "x", config=cfg)


def _no_run_set(tmp_path: Path) -> Path:
    import numpy as np

    out = tmp_path / "no-run"
    with ShardSetWriter(out, "norun", manifest_fields={"producer": {"name": "t"}}) as w:
        for i in range(12):
            w.write(f"s{i}", np.full((16, 16, 1), 10 * i, np.uint8), {"kind": "sample", "producer": "t"})
    return out
