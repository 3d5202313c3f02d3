"""The prepared GPU study runs end to end on the CPU in --quick mode (on tiny stand-in idx files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_study_quick_runs_on_the_cpu(fashion_root: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval" / "gpu_study.py"), "--quick", "--data-root", str(fashion_root),
         "--out", str(tmp_path / "study")],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["runs"]) == {"real-only", "hsg+hpg"}
    for run in result["runs"].values():
        assert 0.0 <= run["linear"] <= 1.0 and run["steps"] == 4
    assert result["steps"]["plain_img_per_s"] > 0 and result["steps"]["joint_img_per_s"] > 0
    assert (tmp_path / "study" / "hsg_hpg" / "final" / "final.json").is_file()
