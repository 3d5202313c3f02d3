"""The prepared GPU study: its data from inside the repository, its phases timed as they go, its budget
planned from the measured steps, one JSON line at the end; run end to end on the CPU (--quick, tiny idx
files), and --steps-only, which says on a CPU that host syncs are only counted on CUDA."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "eval" / "gpu_study.py"


def _study(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def _module():
    spec = importlib.util.spec_from_file_location("gpu_study", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_data_come_from_a_git_ignored_folder_in_the_repository(tmp_path: Path) -> None:
    gpu_study = _module()
    assert gpu_study.DATA_ROOT == ROOT / "data" / "fashion-mnist"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "data/fashion-mnist/train-images-idx3-ubyte.gz"], cwd=ROOT
    )
    assert ignored.returncode == 0
    proc = _study("--quick", "--data-root", str(tmp_path / "nothing"), timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1
    assert str(tmp_path / "nothing") in lines[0] and gpu_study.COPY_HINT in lines[0]
    assert proc.stdout == ""  # refused before any work


def test_the_epochs_are_planned_from_the_steps_and_the_budget() -> None:
    gpu_study = _module()
    steps = {"plain_step_s": 0.1, "joint_step_s": 0.2}
    est = gpu_study.epoch_estimates(steps)
    assert est["method"] > est["real-only"] > 118 * 0.1  # 60,000 / 512 steps, with the loop's overhead
    args = type("Args", (), {"quick": False, "epochs": 12})()
    eval_s = 60.0
    tight = gpu_study.Study(budget=540.0)
    epochs = gpu_study.plan_epochs(tight, args, est, eval_s)
    room = 540.0 - gpu_study.MARGIN_S - 2 * eval_s
    assert 1 <= epochs < 12 and epochs == int(room // (est["real-only"] + est["method"]))
    assert tight.result["plan"]["epochs"] == epochs
    assert gpu_study.plan_epochs(gpu_study.Study(budget=10_000.0), args, est, eval_s) == 12  # as asked
    assert gpu_study.plan_epochs(gpu_study.Study(budget=100.0), args, est, eval_s) == 0  # nothing fits


@pytest.mark.slow
def test_gpu_study_quick_runs_on_the_cpu(fashion_root: Path, tmp_path: Path) -> None:
    proc = _study("--quick", "--data-root", str(fashion_root), "--out", str(tmp_path / "study"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.strip().splitlines()
    result = json.loads(out[-1])
    assert set(result["runs"]) == {"real-only", "hsg+hpg"}
    for run in result["runs"].values():
        assert 0.0 <= run["linear"] <= 1.0 and run["steps"] == 4 and run["epochs"] == 1
    assert result["steps"]["plain_img_per_s"] > 0 and result["steps"]["joint_img_per_s"] > 0
    assert result["steps"]["mixed_precision"] == "no" and "bf16" in result["steps"]["precision_note"]
    assert result["steps"]["syncs"] == {
        "counted": False,
        "note": "sync counting needs CUDA (torch.cuda.set_sync_debug_mode)",
    }
    assert set(result["phases"]) == {"steps", "gan-pretrain", "real-only", "hsg+hpg"}
    assert result["within_budget"] and not result["skipped"]
    # every phase's time printed as it ended, in order, before the JSON line
    done = [m.group(1) for line in out[:-1] if (m := re.match(r"\[\s*\d+s\] (\S+) done in [\d.]+ s", line))]
    assert done == ["steps", "gan-pretrain", "real-only", "hsg+hpg"]
    assert (tmp_path / "study" / "hsg_hpg" / "final" / "final.json").is_file()


@pytest.mark.slow
def test_steps_only_measures_the_steps_alone(fashion_root: Path, tmp_path: Path) -> None:
    proc = _study("--steps-only", "--data-root", str(fashion_root), "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["phases"]) == {"steps"} and "runs" not in result
    assert result["steps"]["mixed_precision"] == "no" and result["steps"]["plain_img_per_s"] > 0
    assert result["steps"]["syncs"]["counted"] is False and "needs CUDA" in proc.stdout
    assert not (tmp_path / "s").exists()  # no run was trained
