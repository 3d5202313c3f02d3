"""The report as a browser renders it: headless Chromium takes a screenshot and dumps the DOM."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthkit.audit import REPORT_HTML, audit
from synthkit.config import AuditConfig
from synthkit.report.html import SECTIONS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)"
    ),
]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    home = cwd / "chromium-home"  # a private profile: nothing of the user's is read or written
    proc = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={home}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_report_renders_in_headless_chromium(audit_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    audit(
        audit_shards, "digits", out, config=AuditConfig(extractor="pixels", kid_subsets=5, kid_subset_size=40)
    )
    url = (out / REPORT_HTML).resolve().as_uri()

    dom = _chromium("--dump-dom", url, cwd=tmp_path).stdout
    for section in SECTIONS:
        assert f'id="{section}"' in dom, section
    assert dom.count('src="data:image/png;base64,') >= 8

    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,2400", url, cwd=tmp_path)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1200)
    # text, tables and sample grids: many colours, and a good share of the page is not background
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    background = np.all(pixels == pixels[0, 0], axis=2).mean()
    assert background < 0.95
