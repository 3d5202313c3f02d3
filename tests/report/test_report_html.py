"""The HTML report: self-contained, with every section, images inline, and untrusted text escaped."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthkit.audit import REPORT_HTML, audit
from synthkit.config import AuditConfig
from synthkit.report.html import SECTIONS
from synthkit.shards import ShardSetWriter

FAST = AuditConfig(extractor="pixels", kid_subsets=5, kid_subset_size=40)


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.images: list[tuple[str | None, str]] = []  # (section id, src)
        self.urls: list[str] = []
        self.scripts = 0
        self._section: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id")
            self.ids.append(a.get("id") or "")
        if tag == "img":
            self.images.append((self._section, a.get("src") or ""))
        if tag == "script":
            self.scripts += 1
        for key in ("href", "src"):
            if a.get(key) and not a[key].startswith("data:"):
                self.urls.append(a[key])


@pytest.fixture(scope="module")
def parsed(audit_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> _Collect:
    out = tmp_path_factory.mktemp("html")
    audit(audit_shards, "digits", out, config=FAST)
    doc = _Collect()
    doc.feed((out / REPORT_HTML).read_text(encoding="utf-8"))
    return doc


def test_all_sections_in_order(parsed: _Collect) -> None:
    assert parsed.ids == list(SECTIONS)


def test_images_are_inline_pngs_and_nothing_is_fetched(parsed: _Collect) -> None:
    assert parsed.urls == [] and parsed.scripts == 0
    sections_with_images = {s for s, _ in parsed.images}
    assert {"grids", "hardest", "pairs", "histograms", "memorisation", "broken"} <= sections_with_images
    for _, src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.width > 10 and image.height > 10
        assert len(np.unique(np.asarray(image.convert("L")))) > 1  # not a blank picture


def test_untrusted_metadata_is_escaped_and_missing_pairs_are_said(tmp_path: Path) -> None:
    shards = tmp_path / "set"
    rng = np.random.default_rng(0)
    with ShardSetWriter(
        shards, "evil", manifest_fields={"producer": {"name": "<script>alert(1)</script>"}}
    ) as w:
        for i in range(30):
            image = rng.integers(0, 256, (16, 16, 1), dtype=np.uint8)
            w.write(f"s{i:03d}", image, {"kind": "sample", "producer": "x"})
    audit(shards, "digits", tmp_path / "out", config=FAST)
    text = (tmp_path / "out" / REPORT_HTML).read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;" in text
    pairs = re.search(r'<section id="pairs">(.*?)</section>', text, re.S)
    assert pairs is not None and "no pairs in this set" in pairs.group(1)
    hardest = re.search(r'<section id="hardest">(.*?)</section>', text, re.S)
    assert hardest is not None and "no hardness in this set" in hardest.group(1)
