"""eval/teach_study.py: fixed class-balanced splits, equal steps, curve reading, paired arms."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "eval"))

import teach_study as ts  # noqa: E402

from synthkit.config import DataConfig  # noqa: E402
from synthkit.data.sources import load_source  # noqa: E402


def test_splits_are_balanced_nested_and_never_touch_val() -> None:
    labels = np.repeat(np.arange(4), [30, 31, 29, 40])
    val, pool = ts.balanced_order(labels, 5, seed=3)
    assert np.bincount(labels[val]).tolist() == [5, 5, 5, 5]
    small, large = ts.balanced_subset(pool, 8), ts.balanced_subset(pool, 80)
    assert np.bincount(labels[small]).tolist() == [2, 2, 2, 2]
    assert np.bincount(labels[large]).tolist() == [20, 20, 20, 20]
    assert set(small) <= set(large) and not set(large) & set(val)
    again_val, again_pool = ts.balanced_order(labels, 5, seed=3)
    assert np.array_equal(val, again_val) and np.array_equal(ts.balanced_subset(again_pool, 8), small)
    with pytest.raises(SystemExit, match="multiple of 4"):
        ts.balanced_subset(pool, 10)
    with pytest.raises(SystemExit, match="only 24"):  # class 2 keeps 29 - 5 outside val
        ts.balanced_subset(pool, 100)


def test_registered_source_trains_on_the_scored_labelled_images() -> None:
    ts.register_sources()
    setting = ts.SETTINGS["digits-n100"]
    sp = ts.splits(setting)
    cfg = DataConfig(name="digits-balanced", size=16, subset=100, subset_seed=ts.ORDER_SEED)
    train = load_source(cfg, "train")
    assert train.images.equal(sp.labelled.images) and train.labels.equal(sp.labelled.labels)
    assert sp.labelled10.images.shape[0] == 100 and len(sp.val) == 350
    # the training pool (every size draws from it) and val split the training images between them
    pool = load_source(DataConfig(name="digits-balanced", size=16, subset_seed=ts.ORDER_SEED), "train")
    full = load_source(DataConfig(name="digits", size=16), "train")

    def counts(images):  # noqa: ANN001, ANN202
        return Counter(bytes(x.numpy()) for x in images)

    assert counts(pool.images) + counts(sp.val.images) == counts(full.images)
    assert len(pool) == len(full) - len(sp.val)


def test_every_run_of_a_setting_takes_the_same_steps() -> None:
    s = ts.SETTINGS["fmnist-n250-w16"]
    assert s.epochs_at(250) == (800, 40) and s.epochs_at(2500) == (80, 4)
    assert 80 * (2500 // s.batch) == s.steps() == 800 * (250 // s.batch)
    with pytest.raises(SystemExit, match="whole epochs"):
        s.epochs_at(3000)


def _curve(values: list[float]) -> list[dict[str, float]]:
    return [{"epoch": 10 * (i + 1), "val_linear": v / 100} for i, v in enumerate(values)]


def test_curve_shape_reads_a_smoothed_curve() -> None:
    assert ts._curve_shape(_curve([70, 75, 78, 80, 82, 84, 86, 88]))["shape"] == "still rising"
    over = ts._curve_shape(_curve([70, 80, 85, 85, 85, 82, 80, 79]))
    assert over["shape"] == "overfits" and over["best_epoch"] == 50
    # one low checkpoint at the end is not overfitting once smoothed
    assert ts._curve_shape(_curve([80, 81, 80, 81, 80, 81, 80, 78.5]))["shape"] == "plateau"


def _result(folder: Path, arm: str, seed: int, val: float, test: float, m: int = 100) -> None:
    scores = {k: (val if k.startswith("val") else test) / 100 for k in ts.KEYS}
    name = f"{arm}-s{seed}-n{m}"
    (folder / f"{name}.json").write_text(
        json.dumps({"arm": arm, "seed": seed, "real_images": m, "scores": scores, "train": {"seconds": 1.0}})
    )


def test_arms_table_pairs_by_seed_and_picks_the_best_arm_on_val(tmp_path: Path) -> None:
    folder = tmp_path / "digits-n100"
    folder.mkdir()
    for seed, off in ((0, 0.0), (1, 1.0), (2, -1.0)):
        _result(folder, "real-only", seed, 80 + off, 79 + off)
        _result(folder, "naive", seed, 80.5 + off, 79.5 + off)
        _result(folder, "hsg", seed, 83 + off, 81.5 + off)  # best on val
        _result(folder, "hpg", seed, 82 + off, 85 + off)  # best on test: must not be chosen
        _result(folder, "real-only at 2N", seed, 82 + off, 80.5 + off, m=200)
    t = ts.arms_table(tmp_path, "digits-n100", tmp_path)
    assert set(t["rows"]) == {"real-only", "naive", "hsg", "hpg", "real-2n"}
    pr = {(p["arm"], p["minus"]): p for p in t["paired"]}
    # paired per seed: the seed offsets cancel, so the differences have no spread
    assert pr[("hsg", "real-only")]["test_linear"]["mean"] == pytest.approx(2.5)
    assert pr[("hsg", "real-only")]["test_linear"]["std"] == pytest.approx(0.0, abs=1e-9)
    v = t["verdict"]
    assert v["best_on_val"] == "hsg" and v["worst_on_val"] == "hpg"
    assert v["target_2_points"] is True and v["target_data_efficiency"] is True
    assert v["target_above_naive"] is True  # +2.0 with no spread over three seeds
