"""verify_shard_set passes a good set and reports, without raising, each way a set can go bad."""

from __future__ import annotations

import json

import pytest

import synthkit.shards.writer as writer_module
from synthkit.shards import verify_shard_set


def test_good_set_verifies(write_set):
    report = verify_shard_set(write_set())
    assert report.ok, report.problems
    assert (report.total, report.shards) == (5, 3)


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF  # inside the first member's data
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:700])


@pytest.mark.parametrize(
    ("damage", "expect"),
    [
        (_flip_byte, ["hard-000001.tar: sha256"]),
        (lambda p: p.unlink(), ["hard-000001.tar: listed in the manifest but missing"]),
        (_truncate, ["hard-000001.tar: 700 bytes", "sha256", "truncated", "read 0 samples"]),
    ],
)
def test_damaged_shard_is_reported(write_set, damage, expect):
    out = write_set()
    damage(out / "hard-000001.tar")
    report = verify_shard_set(out)
    assert not report.ok
    for text in expect:
        assert any(text in p for p in report.problems), (text, report.problems)
    assert all("hard-000000.tar" not in p for p in report.problems)  # the intact shard stays clean


def test_undecodable_png_is_reported(write_set, monkeypatch):
    real_encode = writer_module._encode_png
    monkeypatch.setattr(
        writer_module,
        "_encode_png",
        lambda key, image: b"garbage" if key == "s002" else real_encode(key, image),
    )
    report = verify_shard_set(write_set())
    assert len(report.problems) == 1, (
        report.problems
    )  # one bad image, and the rest of its shard still checked
    assert "hard-000001.tar: sample 's002'" in report.problems[0]
    assert "cannot decode image" in report.problems[0]
    assert report.total == 4


def test_manifest_sizes_and_strays_are_checked(write_set, tmp_path):
    out = write_set()
    (out / "sizes.json").write_text(json.dumps({"hard-000000.tar": 9}))
    (out / "hard-000009.tar").write_bytes(b"")
    problems = verify_shard_set(out).problems
    assert any(p.startswith("sizes.json") for p in problems)
    assert any(p.startswith("hard-000009.tar: shard file not listed") for p in problems)
    (out / "manifest.json").unlink()
    assert "missing" in verify_shard_set(out).problems[0]
    (out / "manifest.json").write_text("[")
    assert "not valid JSON" in verify_shard_set(out).problems[0]
