"""The audit's verdict: a real-vs-real reference in the same feature space and one gate per check.

Small sets made here from the embedded digits (16 px, pixel features): noise, real held-out digits, real
digits with planted blanks, copies of training images, conditions that do or do not follow the images.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from synthkit.audit import REPORT_HTML, REPORT_JSON, audit, kid_subset_size
from synthkit.audit_verdict import (
    FAIL,
    PASS,
    SKIP,
    WARN,
    broken_gate,
    conditions_gate,
    extractor_gate,
    failing,
    memorisation_gate,
    precision_gate,
    ratio_gate,
    verdict,
)
from synthkit.cli import main
from synthkit.config import AuditConfig, DataConfig
from synthkit.data.sources import load_source
from synthkit.metrics.conditions_coverage import condition_separability
from synthkit.shards import ShardSetWriter

FAST = AuditConfig(extractor="pixels", kid_subsets=10, kid_subset_size=50)
N = 120


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    s = load_source(DataConfig(name="digits", size=16), split)
    return s.images.permute(0, 2, 3, 1).numpy(), s.labels.numpy()


def _write(out: Path, images: list[np.ndarray], metas: list[dict], **manifest: object) -> Path:
    with ShardSetWriter(
        out, out.name, maxcount=50, manifest_fields={"producer": {"name": "t"}, **manifest}
    ) as w:
        for i, (im, meta) in enumerate(zip(images, metas, strict=True)):
            w.write(f"s{i:04d}", im, {"kind": "sample", "producer": "t", **meta})
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """noise (conditions at random); real held-out digits (conditions = their labels); the same with 4 of
    120 images blanked (3.3 % broken: a warning); the same with the conditions shuffled (collapse)."""
    root = tmp_path_factory.mktemp("verdict")
    rng = np.random.default_rng(0)
    test, labels = _digits("test")
    real = [test[i] for i in range(N)]
    by_label = [{"condition": int(labels[i]), "condition_k": 10} for i in range(N)]
    noise = [rng.integers(0, 256, (16, 16, 1), dtype=np.uint8) for _ in range(N)]
    blanked = [np.zeros_like(im) if i % 30 == 0 else im for i, im in enumerate(real)]
    shuffled = [{"condition": int(c), "condition_k": 10} for c in rng.permutation(labels[:N])]
    return {
        "noise": _write(root / "noise", noise, [{"condition": i % 10, "condition_k": 10} for i in range(N)]),
        "real": _write(root / "real", real, by_label),
        "blanked": _write(root / "blanked", blanked, by_label),
        "shuffled": _write(root / "shuffled", real, shuffled),
    }


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("verdict-out")


@pytest.fixture(scope="module")
def reports(sets: dict[str, Path], outputs: Path) -> dict[str, dict]:
    return {name: audit(path, "digits", outputs / name, config=FAST) for name, path in sets.items()}


@pytest.fixture(scope="module")
def planted(audit_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("planted")
    return audit(audit_shards, "digits", out, config=FAST), out


def _gates(report: dict) -> dict[str, dict]:
    return {g["name"]: g for g in report["verdict"]["gates"]}


def test_noise_fails_precision_and_coverage_against_the_reference(reports: dict[str, dict]) -> None:
    report = reports["noise"]
    gates = _gates(report)
    assert report["verdict"]["status"] == FAIL
    assert gates["precision"]["status"] == FAIL and gates["coverage"]["status"] == FAIL
    assert gates["precision"]["value"] == 0.0 and gates["precision"]["reference"] > 0.8
    assert "real-vs-real" in gates["precision"]["reason"]
    # random conditions on noise: the features do not tell them apart
    assert gates["conditions"]["status"] == FAIL and "ignores its condition" in gates["conditions"]["reason"]
    # the reference: the digits' test split, at the synthetic set's size, in the same feature space
    desc = report["reference"]["desc"]
    assert desc["kind"] == "held-out split" and desc["held_out"]["split"] == "test"
    assert desc["held_out"]["count"] == N == report["reference"]["figures"]["count"]
    assert report["metrics"]["precision"]["reference"] == report["reference"]["figures"]["precision"]


def test_real_versus_real_passes_every_gate(reports: dict[str, dict]) -> None:
    report = reports["real"]
    assert report["verdict"]["status"] == PASS, report["verdict"]
    assert all(g["status"] == PASS for g in report["verdict"]["gates"])
    gates = _gates(report)
    assert gates["precision"]["value"] / gates["precision"]["reference"] >= 0.75
    q = report["reference"]["extractor_quality"]
    assert q["knn_accuracy"] > 0.8 and q["num_classes"] == 10  # pixels tell digits apart
    sep = report["details"]["condition_separability"]
    assert sep["chance_corrected"] > 0.5  # conditions that are the true classes show


def test_planted_blanks_warn_and_shuffled_conditions_fail(reports: dict[str, dict]) -> None:
    blanked = _gates(reports["blanked"])
    assert blanked["broken"]["status"] == WARN and blanked["broken"]["value"] == pytest.approx(4 / N)
    assert reports["blanked"]["verdict"]["status"] == WARN
    shuffled = _gates(reports["shuffled"])
    assert shuffled["conditions"]["status"] == FAIL
    assert shuffled["precision"]["status"] == PASS  # the images are fine; only their conditions are not


def test_copies_of_training_images_fail_memorisation(planted: tuple[dict, Path]) -> None:
    # audit_shards: 3 exact copies of real training digits among 115 samples (2.6 %), 4 blanks (3.5 %)
    report, out = planted
    gates = _gates(report)
    assert gates["memorisation"]["status"] == FAIL and gates["memorisation"]["reference"] < 0.01
    assert gates["broken"]["status"] == WARN
    saved = json.loads((out / REPORT_JSON).read_text())
    assert saved["verdict"] == report["verdict"]


def test_a_shard_set_as_real_data_is_split_for_the_reference(sets: dict[str, Path], tmp_path: Path) -> None:
    # real data given as a shard set (no second split): a disjoint part of it is held out, and the synthetic
    # figures the gates read are scored against the same remaining part, at the same size
    report = audit(sets["noise"], str(sets["real"]), tmp_path / "s", config=FAST)
    desc = report["reference"]["desc"]
    assert desc["kind"] == "disjoint split of the real set"
    assert desc["held_out"]["count"] == N // 2 and desc["real"]["count"] == N - N // 2
    matched = report["reference"]["synthetic"]
    assert matched["count"] == N // 2 and matched["real_count"] == N - N // 2
    assert _gates(report)["precision"]["status"] == FAIL
    none = audit(
        sets["noise"], "digits", tmp_path / "n", config=AuditConfig(extractor="pixels", reference="none")
    )
    assert _gates(none)["precision"]["status"] == SKIP and "turned off" in _gates(none)["precision"]["reason"]


def test_kid_subsets_are_smaller_than_the_sets(reports: dict[str, dict]) -> None:
    assert kid_subset_size(1437, 120, 1000) == 60 and kid_subset_size(3, 3, 1000) is None
    m = reports["real"]["metrics"]
    assert "subsets of 50" in m["kid_mean"]["description"]  # FAST asks 50, less than half of 120
    assert m["kid_std"]["value"] > 1e-6


def test_kid_std_means_something_with_the_default_subset_size(sets: dict[str, Path], tmp_path: Path) -> None:
    report = audit(
        sets["real"], "digits", tmp_path / "k", config=AuditConfig(extractor="pixels", kid_subsets=20)
    )
    assert "subsets of 60" in report["metrics"]["kid_mean"]["description"]
    assert report["metrics"]["kid_std"]["value"] > 1e-6  # it was 2.8e-16 when each subset was the whole set


def test_the_html_opens_with_the_verdict(reports: dict[str, dict], outputs: Path) -> None:
    text = (outputs / "noise" / REPORT_HTML).read_text(encoding="utf-8")
    assert text.index('id="verdict"') < text.index('id="summary"') < text.index('id="metrics"')
    verdict_html = re.search(r'<section id="verdict">(.*?)</section>', text, re.S).group(1)
    assert '<span class="badge fail">fail</span>' in verdict_html
    for gate in ("broken", "memorisation", "precision", "coverage", "conditions", "extractor"):
        assert f"<th class='row'>{gate}</th>" in verdict_html
    assert "real vs real (reference)" in verdict_html
    extractor_html = re.search(r'<section id="extractor">(.*?)</section>', text, re.S).group(1)
    assert "kNN accuracy of held-out real images" in extractor_html
    grids = re.search(r'<section id="grids">(.*?)</section>', text, re.S).group(1)
    assert "real images" in grids and "condition 0" in grids and "condition 9" in grids


def test_the_real_row_and_labels_are_escaped(sets: dict[str, Path], tmp_path: Path) -> None:
    test, labels = _digits("test")
    evil = [f"<img src=x onerror=alert({c})>" for c in range(10)]
    real = tmp_path / "evil-real"
    with ShardSetWriter(
        real, "evil", maxcount=100, manifest_fields={"producer": {"name": "t"}, "classes": evil}
    ) as w:
        for i in range(200):
            w.write(f"r{i:04d}", test[i], {"kind": "real", "producer": "t"}, cls=int(labels[i]))
    audit(sets["real"], str(real), tmp_path / "e", config=FAST)
    text = (tmp_path / "e" / REPORT_HTML).read_text(encoding="utf-8")
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(0)&gt;" in text


def test_pairs_are_shown_side_by_side_and_marked(planted: tuple[dict, Path]) -> None:
    text = (planted[1] / REPORT_HTML).read_text(encoding="utf-8")
    pairs = re.search(r'<section id="pairs">(.*?)</section>', text, re.S).group(1)
    assert (
        pairs.count("<figcaption>pair_a</figcaption>") == 16 == pairs.count("<figcaption>pair_b</figcaption>")
    )
    # each pair_a figure is followed by its pair_b in the same cell
    cells = re.findall(r"<td>(.*?)</td>", pairs, re.S)
    assert all(c.index("pair_a") < c.index("pair_b") for c in cells if "pair_a" in c)


def _cli(sets_dir: Path, out: Path, *extra: str) -> int:
    args = ["audit", str(sets_dir), "--real", "digits", "--out", str(out), "--extractor", "pixels"]
    return main([*args, "--no-progress", *extra])


def test_fail_on_exit_codes(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(sets["noise"], tmp_path / "b", "--fail-on", "fail") == 1
    text, err = capsys.readouterr()
    assert text.startswith("verdict: FAIL") and re.search(r"^  fail  precision ", text, re.M)
    assert "--fail-on fail: precision (fail)" in err and (tmp_path / "b" / REPORT_JSON).is_file()
    # a set that only warns: exit 1 at --fail-on warn, 0 at --fail-on fail
    assert _cli(sets["blanked"], tmp_path / "c", "--fail-on", "fail") == 0
    assert _cli(sets["blanked"], tmp_path / "d", "--fail-on", "warn") == 1
    capsys.readouterr()
    assert _cli(sets["real"], tmp_path / "e", "--fail-on", "warn", "--json") == 0
    assert json.loads(capsys.readouterr().out)["verdict"]["status"] == PASS
    # without --fail-on the exit status is 0 whatever the verdict: tests/cli/test_audit_cli.py audits
    # audit_shards (memorisation: fail) and expects 0


def test_gate_thresholds() -> None:
    assert broken_gate(0.004, 0.0).status == PASS and broken_gate(0.03, 0.0).status == WARN
    assert broken_gate(0.06, 0.0).status == FAIL and broken_gate(0.06, 0.03).status == WARN  # excess only
    assert memorisation_gate(0.01, 0.008, 0.25).status == PASS
    assert (
        memorisation_gate(0.03, 0.0, 0.25).status == FAIL
        and memorisation_gate(0.015, 0.0, 0.25).status == WARN
    )
    # the user's Fashion-MNIST figures: real 0.967, cGAN 0.77, HPG 0.57, diffusion 0.007, noise 0
    assert [ratio_gate("precision", p, 0.967, "").status for p in (0.77, 0.57, 0.007, 0.0)] == [
        PASS,
        WARN,
        FAIL,
        FAIL,
    ]
    assert ratio_gate("coverage", 0.5, None, "no reference").status == SKIP
    # precision fooled (noise in one dense spot of a classifier's space): density decides
    fooled = precision_gate(0.867, 0.943, 0.173, 0.987, "")
    assert fooled.status == FAIL and "density 0.173" in fooled.reason
    assert precision_gate(0.8, 0.9, 0.95, 1.0, "").status == PASS
    assert precision_gate(0.8, 0.9, 0.6, 1.0, "").status == WARN
    assert ratio_gate("coverage", 0.0, 0.01, "").status == WARN  # a reference near 0 judges nothing
    # extractors: the 0.16-accuracy classifier of 10 classes fails; 0.5 warns; 0.9 passes
    q = {"id": "x", "num_classes": 10}
    assert extractor_gate({**q, "knn_accuracy": 0.16}).status == FAIL
    assert extractor_gate({**q, "knn_accuracy": 0.5}).status == WARN
    assert extractor_gate({**q, "knn_accuracy": 0.9}).status == PASS
    clf = {**q, "knn_accuracy": 0.9, "classifier_test_accuracy": 0.16, "classifier_classes": 10}
    assert extractor_gate(clf).status == FAIL  # the lower of the two decides
    assert extractor_gate({"id": "x", "knn_accuracy": None}).status == SKIP
    # conditions: missing conditions, collapse onto few classes
    cond = {"conditions_seen": 4, "num_conditions": 10}
    assert conditions_gate(cond, None, None, None).status == FAIL
    classes = {"classes_generated": 9, "num_classes": 10, "normalized_entropy": 0.9}
    ref = {"classes_generated": 10, "normalized_entropy": 0.99}
    assert conditions_gate(None, None, classes, ref).status == WARN
    assert conditions_gate(None, None, None, None).status == SKIP
    v = verdict([broken_gate(0.03, 0.0), ratio_gate("coverage", 0.5, None, "")])
    assert v["status"] == WARN and [g["name"] for g in failing(v, "warn")] == ["broken"]
    assert failing(v, "fail") == []


def test_condition_separability_is_chance_when_conditions_are_ignored() -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 8, generator=g) * 5
    cond = [i % 5 for i in range(200)]
    x = centres[torch.tensor(cond)] + torch.randn(200, 8, generator=g)
    follows = condition_separability(x, cond)
    ignored = condition_separability(torch.randn(200, 8, generator=g), cond)
    assert follows is not None and ignored is not None
    assert follows["accuracy"] > 0.95 and follows["chance"] == pytest.approx(0.2)
    assert abs(ignored["chance_corrected"]) < 0.15
    assert condition_separability(x, [0] * 200) is None  # one condition: nothing to tell apart


def test_a_source_without_its_other_split_falls_back_to_a_split(
    sets: dict[str, Path], fashion_root: Path, tmp_path: Path
) -> None:
    import shutil

    only_train = tmp_path / "fm"
    only_train.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        shutil.copy(fashion_root / name, only_train / name)
    report = audit(sets["real"], "fashion-mnist", tmp_path / "o", config=FAST, real_root=str(only_train))
    desc = report["reference"]["desc"]
    assert desc["kind"] == "disjoint split of the real set" and "test split of fashion-mnist" in desc["why"]
    assert desc["held_out"]["count"] == N and desc["real"]["count"] == 400 - N


def test_a_near_chance_classifier_fails_the_extractor_gate(sets: dict[str, Path], tmp_path: Path) -> None:
    from synthkit.metrics.extractors import train_classifier

    clf = tmp_path / "clf"
    meta = train_classifier(
        DataConfig(name="digits", size=16, subset=200), clf, epochs=1, batch_size=64, lr=1e-9, width=4
    )
    cfg = AuditConfig(extractor="classifier", kid_subsets=5, kid_subset_size=30)
    report = audit(sets["real"], "digits", tmp_path / "o", config=cfg, classifier=clf)
    gate = _gates(report)["extractor"]
    assert gate["status"] == FAIL and "near chance" in gate["reason"]
    assert report["verdict"]["status"] == FAIL
    q = report["reference"]["extractor_quality"]
    assert q["classifier_test_accuracy"] == meta["test_accuracy"] and q["classifier_classes"] == 10
    html = (tmp_path / "o" / REPORT_HTML).read_text(encoding="utf-8")
    section = re.search(r'<section id="extractor">(.*?)</section>', html, re.S).group(1)
    assert "classifier&#x27;s test accuracy" in section and f"{meta['test_accuracy']:.3f}" in section
