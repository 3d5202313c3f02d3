"""The audit at scale: streamed features equal the in-memory computation, the estimates above
``audit.exact_max`` are close to the exact scores and say how they were made, and ``--device``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthkit.audit import REPORT_HTML, REPORT_JSON, audit
from synthkit.cli import EXIT_USAGE, main
from synthkit.config import AuditConfig, DataConfig
from synthkit.data.sources import load_source
from synthkit.logs import error_lines
from synthkit.metrics import broken, fid, memorisation, prdc
from synthkit.shards import ShardSetWriter, iter_samples

FAST = AuditConfig(extractor="pixels", kid_subsets=10, kid_subset_size=50)
FEATURE_SCORES = ("fid", "kid_mean", "precision", "recall", "density", "coverage", "memorisation_suspects")


def _pixels(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(images.shape[0], -1).float() / 255.0


def _stacked(shards: Path) -> tuple[torch.Tensor, list[dict]]:
    samples = list(iter_samples(shards))
    images = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2)
    return images, [s["meta"] for s in samples]


def _digits() -> torch.Tensor:
    return load_source(DataConfig(name="digits", size=16), "train").images


def test_streamed_features_give_the_in_memory_scores(audit_shards: Path, tmp_path: Path) -> None:
    """Every image of both sets stacked and scored at once (the audit before streaming) against the audit
    streamed in batches of 7: the same scores, suspects and broken images."""
    syn, _ = _stacked(audit_shards)
    real = _digits()
    f_syn, f_real = _pixels(syn), _pixels(real)
    pr = prdc.prdc(f_real, f_syn, k=5, chunk_size=FAST.chunk_size)
    mem = memorisation.memorisation(f_real, f_syn, threshold=FAST.memorisation_threshold, top=FAST.top)
    kid_mean, _ = fid.kid(f_real, f_syn, subsets=10, subset_size=50, seed=0)

    report = audit(audit_shards, "digits", tmp_path / "a", config=dataclasses.replace(FAST, batch_size=7))
    m = report["metrics"]
    assert m["fid"]["value"] == pytest.approx(fid.fid(f_real, f_syn), rel=1e-6)
    assert m["kid_mean"]["value"] == pytest.approx(kid_mean, rel=1e-6)
    for key, value in pr.scores().items():
        assert m[key]["value"] == pytest.approx(value, abs=1e-12), key
    got = report["details"]["memorisation"]
    assert got["suspect_count"] == mem["suspect_count"]
    assert [(p["fake_index"], p["real_index"]) for p in got["nearest_pairs"]] == [
        (p["fake_index"], p["real_index"]) for p in mem["nearest_pairs"]
    ]
    assert report["details"]["broken"] == broken.broken_images(syn)
    assert report["methods"]["prdc"]["exact"] and report["methods"]["memorisation"]["exact"]
    assert report["methods"]["features"] == {"device": "cpu", "streamed": True, "batch_size": 7}

    # the batch size changes nothing but the timings
    other = audit(audit_shards, "digits", tmp_path / "b", config=FAST)
    assert {k: v["value"] for k, v in other["metrics"].items()} == {k: v["value"] for k, v in m.items()}
    assert other["details"] == report["details"]


def test_a_real_shard_set_is_streamed_with_its_seeded_subset(audit_shards: Path, tmp_path: Path) -> None:
    real = _digits()
    real_set = tmp_path / "real"
    with ShardSetWriter(real_set, "digits-real", maxcount=100, manifest_fields={}) as w:
        for i in range(400):
            w.write(f"r{i:04d}", real[i].permute(1, 2, 0).numpy(), {"kind": "sample", "producer": "real"})
    cfg = dataclasses.replace(FAST, max_real=150, seed=3, batch_size=32)
    report = audit(audit_shards, str(real_set), tmp_path / "a", config=cfg)
    keep = torch.randperm(400, generator=torch.Generator().manual_seed(3))[:150].sort().values
    syn, _ = _stacked(audit_shards)
    pr = prdc.prdc(_pixels(real[:400][keep]), _pixels(syn), k=5)
    for key, value in pr.scores().items():
        assert report["metrics"][key]["value"] == pytest.approx(value, abs=1e-12), key
    assert report["real"]["count"] == 150 and report["real"]["subsample"] == {"n": 150, "seed": 3}
    # the report's nearest real images are read again from the shards, at the subset's positions
    text = (tmp_path / "a" / REPORT_HTML).read_text()
    assert text.count("data:image/png;base64,") >= 5


def test_above_exact_max_scores_are_estimated_close_to_exact_and_say_how(
    audit_shards: Path, audit_layout: dict, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(FAST, exact_max=100, prdc_sample=1000, prdc_repeats=3, ann_probe=60)
    approx = audit(audit_shards, "digits", tmp_path / "approx", config=cfg)
    exact = audit(
        audit_shards, "digits", tmp_path / "exact", config=dataclasses.replace(cfg, exact_max=50_000)
    )
    how = approx["methods"]
    assert how["prdc"]["exact"] is False and how["prdc"]["method"] == "seeded sample"
    assert how["prdc"]["sample"] == {"real": 1000, "synthetic": 115} and how["prdc"]["repeats"] == 3
    assert how["memorisation"]["exact"] is False and how["memorisation"]["method"] == "ivf"
    ann = how["memorisation"]
    assert ann["nlist"] >= 2 and 1 <= ann["nprobe"] <= ann["nlist"] and ann["probe"]["synthetic"] == 60
    assert (
        0.9 <= ann["recall_at_1"]["synthetic_to_real"] <= 1 and 0.9 <= ann["recall_at_1"]["real_to_real"] <= 1
    )
    assert 0.9 <= ann["suspect_agreement"] <= 1
    assert exact["methods"]["prdc"]["exact"] is True
    a, e = approx["metrics"], exact["metrics"]
    assert a["fid"]["value"] == e["fid"]["value"]  # FID is exact on both paths
    for key in ("precision", "recall", "density", "coverage"):
        assert a[key]["estimated"] and e[key]["estimated"] is None
        assert a[key]["std"] == how["prdc"]["std"][key] >= 0
        assert abs(a[key]["value"] - e[key]["value"]) < 0.12, key
    assert "IVF" in a["memorisation_suspects"]["estimated"]
    # the planted copies are found on the approximate path too
    first_copy = audit_layout["hard"] + 2 * audit_layout["pairs"]
    suspects = {(s["fake_index"], s["real_index"]) for s in approx["details"]["memorisation"]["suspects"]}
    assert {(first_copy + j, i) for j, i in enumerate(audit_layout["copied"])} <= suspects
    assert abs(a["memorisation_suspects"]["value"] - e["memorisation_suspects"]["value"]) <= 2
    text = (tmp_path / "approx" / REPORT_HTML).read_text()
    assert "estimated: mean of 3 seeded samples" in text and "id='methods'" in text and "recall_at_1" in text
    assert (
        json.loads((tmp_path / "approx" / REPORT_JSON).read_text())["methods"]["memorisation"]["method"]
        == "ivf"
    )


def test_device_cpu_explicit_and_a_bad_device_is_one_line(
    audit_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["audit", str(audit_shards), "--real", "digits", "--extractor", "pixels", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "cpu"), "--device", "cpu"]) == 0
    assert "on cpu" in capsys.readouterr().out
    report = json.loads((tmp_path / "cpu" / REPORT_JSON).read_text())
    assert report["methods"]["features"]["device"] == "cpu" and report["config"]["device"] == "cpu"
    bad = ["nope"] + ([] if torch.cuda.is_available() else ["cuda"])
    for name in bad:
        code = main([*base, "--out", str(tmp_path / name), "--device", name])
        lines = error_lines(capsys.readouterr().err)
        assert code == EXIT_USAGE and len(lines) == 1 and "--device" in lines[0] and repr(name) in lines[0]
        assert not (tmp_path / name / REPORT_JSON).exists()


@pytest.mark.slow
def test_hardness_streamed_in_odd_batches_equals_one_call(
    audit_shards: Path, trained_run: Path, tmp_path: Path
) -> None:
    """Batches of 100 are re-cut into the 256-sample chunks (and seeds) of one hardness_of call."""
    from synthkit.data.views import Views
    from synthkit.metrics.extractors import encoder_extractor
    from synthkit.metrics.hardness import hardness_of
    from synthkit.objectives.scoring import Scorer, reference_batch
    from synthkit.run_files.final import load_final

    syn, _ = _stacked(audit_shards)
    syn = torch.cat([syn, syn, syn])[:300]  # more than one chunk of 256
    many = tmp_path / "many"
    with ShardSetWriter(many, "many", maxcount=64, manifest_fields={}) as w:
        for i in range(300):
            w.write(f"s{i:04d}", syn[i].permute(1, 2, 0).numpy(), {"kind": "sample", "producer": "t"})
    cfg = AuditConfig(extractor="pixels", kid_subsets=5, kid_subset_size=50, batch_size=100, seed=2)
    report = audit(many, "digits", tmp_path / "a", config=cfg, encoder_run=trained_run)

    art, ext = load_final(trained_run), encoder_extractor(trained_run)
    syn_x, real_x = ext.prepare(syn), ext.prepare(_digits())
    views = Views(art.cfg.views, ext.channels or syn_x.shape[1], syn_x.shape[-1])
    reference = reference_batch(real_x, art.cfg.train.batch_size, 2)
    scorer = Scorer(art.encoder, views, art.objective, reference, seed=2)
    whole = hardness_of(scorer, syn_x.float() / 255.0, seed=2).double()
    got = report["details"]["hardness"]["encoder"]
    assert got["count"] == 300
    assert got["mean"] == pytest.approx(whole.mean().item(), rel=1e-6)
    assert got["max"] == pytest.approx(whole.max().item(), rel=1e-6)
