"""A set written in parts (by processes or array jobs) is published, after its checks, as the bytes one writer
writes; a part's writer touches only its own shards; publication refuses anything incomplete or changed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthkit.shards import ShardError, ShardSetExistsError, ShardSetWriter, read_manifest, verify_shard_set
from synthkit.shards.parts import publish_parts
from synthkit.shards.writer import Part, journal_name

FIELDS = {"producer": "test", "config": {"a": 1}, "seed": 0}
MAXCOUNT = 3
Sample = tuple[str, np.ndarray, dict[str, Any], None]


def _samples(n: int = 14) -> list[Sample]:  # 14 samples in shards of 3: 4 full shards and one of 2
    rng = np.random.default_rng(0)
    meta = {"kind": "hard", "producer": "test", "hardness": 0.5}
    return [(f"s{i:03d}", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), meta, None) for i in range(n)]


def _files(out: Path) -> dict[str, bytes]:
    # recursive: the per-shard metadata tables (metadata/) are part of the set's bytes
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _one_writer(out: Path, items: list[Sample]) -> Path:
    with ShardSetWriter(out, "hard", maxcount=MAXCOUNT, manifest_fields=FIELDS) as w:
        for item in items:
            w.write(*item)
    return out


def _part(out: Path, items: list[Sample], index: int, count: int, fields=FIELDS) -> dict[str, Any]:
    part = Part.of(len(items), MAXCOUNT, index, count)
    mine = part.samples(len(items), MAXCOUNT)
    with ShardSetWriter(out, "hard", maxcount=MAXCOUNT, manifest_fields=fields, resume=True, part=part) as w:
        for item in items[mine.start + w.resume_from : mine.stop]:
            w.write(*item)
    return w.close()


@pytest.mark.parametrize(
    ("total", "maxcount", "count"), [(14, 3, 2), (14, 3, 3), (14, 3, 7), (5, 3, 4), (9, 3, 3)]
)
def test_parts_cover_every_shard_once_at_shard_boundaries(total, maxcount, count):
    parts = [Part.of(total, maxcount, i, count) for i in range(count)]
    assert [p.first_shard for p in parts] == [sum(q.shards for q in parts[:i]) for i in range(count)]
    assert sum(p.shards for p in parts) == -(-total // maxcount)
    covered = [i for p in parts for i in p.samples(total, maxcount)]
    assert covered == list(range(total))
    assert max(p.shards for p in parts) - min(p.shards for p in parts) <= 1
    with pytest.raises(ValueError, match="part 3/3"):
        Part.of(total, maxcount, 3, 3)


@pytest.mark.parametrize("count", [2, 3, 5, 7])
def test_parts_in_any_order_publish_the_bytes_of_one_writer(tmp_path: Path, count: int) -> None:
    items = _samples()
    ref = _one_writer(tmp_path / "ref", items)
    out = tmp_path / "parts"
    records = [_part(out, items, i, count) for i in reversed(range(count))]
    assert not (out / "manifest.json").exists()  # no part claims the set complete
    assert sum(r["total"] for r in records) == len(items)
    journal = out / journal_name("hard", Part.of(len(items), MAXCOUNT, 0, count))
    left = journal.read_bytes()
    manifest = publish_parts(out)
    assert _files(out) == _files(ref)  # shards, sizes.json, manifest.json; the part journals removed
    assert manifest == read_manifest(ref) and verify_shard_set(out).ok
    # publishing again finds the set published, also with a journal that a kill after the manifest left
    journal.write_bytes(left)
    assert publish_parts(out) == manifest
    assert _files(out) == _files(ref)
    assert publish_parts(out) == manifest


def test_publish_refuses_missing_incomplete_or_changed_parts(tmp_path: Path) -> None:
    items, out = _samples(), tmp_path / "parts"
    _part(out, items, 0, 3)
    with pytest.raises(ShardError, match=r"part\(s\) 1, 2 of 3 never started"):
        publish_parts(out)
    # part 1 killed after its first shard: its journal lists one shard and is not complete
    p1 = Part.of(len(items), MAXCOUNT, 1, 3)
    w = ShardSetWriter(out, "hard", maxcount=MAXCOUNT, manifest_fields=FIELDS, resume=True, part=p1)
    for item in items[p1.samples(len(items), MAXCOUNT).start :][:4]:
        w.write(*item)
    _part(out, items, 2, 3)
    with pytest.raises(ShardError, match=r"part 1 of 3 is not complete \(1 of 2 shards written\): rerun it"):
        publish_parts(out)
    assert not (out / "manifest.json").exists()
    # the rerun of part 1 keeps its durable shard and finishes; then a shard is changed on disk
    _part(out, items, 1, 3)
    victim = out / "hard-000003.tar"
    data = bytearray(victim.read_bytes())
    data[700] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"hard-000003\.tar differs from its part's journal"):
        publish_parts(out)
    assert not (out / "manifest.json").exists() and not (out / "sizes.json").exists()


def test_parts_of_other_requests_or_splits_are_refused(tmp_path: Path) -> None:
    items = _samples()
    out = tmp_path / "a"
    _part(out, items, 0, 2)
    with pytest.raises(ShardSetExistsError, match="different request"):
        _part(out, items, 0, 2, fields={**FIELDS, "seed": 1})
    _part(out, items, 1, 2, fields={**FIELDS, "seed": 1})
    with pytest.raises(ShardError, match="different requests"):
        publish_parts(out)
    out = tmp_path / "b"
    _part(out, items, 0, 2)  # shards 0-1
    with pytest.raises(ShardSetExistsError, match=r"without a manifest or a journal \(hard-000001\.tar\)"):
        _part(out, items, 1, 3)  # shards 1-2: shard 1 is not its to keep
    _part(out, items, 2, 3)  # shards 3-4
    with pytest.raises(ShardError, match=r"split in different ways \(into \[2, 3\] parts\)"):
        publish_parts(out)


def test_a_part_leaves_the_other_parts_files_alone_and_stays_in_its_shards(tmp_path: Path) -> None:
    items, out = _samples(), tmp_path / "parts"
    _part(out, items, 1, 2)
    others = _files(out)
    # part 0 killed mid-shard, and part 1's writer "in progress" (a temp file of its own)
    p0 = Part.of(len(items), MAXCOUNT, 0, 2)
    w = ShardSetWriter(out, "hard", maxcount=MAXCOUNT, manifest_fields=FIELDS, resume=True, part=p0)
    for item in items[:4]:
        w.write(*item)
    w._shard.file._flush()
    os.close(w._shard.file._fd)
    w._shard.file._fd = -1
    busy = out / ".hard-000004.tar.tmp"
    busy.write_bytes(b"another part's shard in progress")
    w = ShardSetWriter(out, "hard", maxcount=MAXCOUNT, manifest_fields=FIELDS, resume=True, part=p0)
    assert w.resume_from == 3
    assert not (out / ".hard-000001.tar.tmp").exists()  # its own stale temp: removed
    assert busy.exists()  # not its own: left alone
    for item in items[3:6]:  # part 0 of 2 of 5 shards: shards 0-1
        w.write(*item)
    with pytest.raises(ValueError, match="holds 2 shards; writing more would overlap the next part"):
        w.write(*items[6])
    w.close()
    busy.unlink()
    assert {k: v for k, v in _files(out).items() if k in others} == others
    publish_parts(out)
    assert _files(out) == _files(_one_writer(tmp_path / "ref", items))


def test_part_journal_names_and_resume_only(tmp_path: Path) -> None:
    part = Part.of(10, 3, 1, 2)
    assert journal_name("hard", part) == ".hard.part-00001-of-00002.journal.json"
    assert journal_name("hard") == ".hard.journal.json"
    with pytest.raises(ValueError, match="resume=True"):
        ShardSetWriter(tmp_path, "hard", maxcount=3, manifest_fields=FIELDS, part=part)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda j: j.update(format="other"), "not a synthkit-shards-journal version 1 part journal"),
        (lambda j: j.update(version=2), "not a synthkit-shards-journal version 1 part journal"),
        (lambda j: j.update(part=[0, 2]), "not a synthkit-shards-journal version 1 part journal"),
        (lambda j: j.update(fields=None), "not a synthkit-shards-journal version 1 part journal"),
        (
            lambda j: j.update(shards=["hard-000000.tar"]),
            "not a synthkit-shards-journal version 1 part journal",
        ),
        (lambda j: j["fields"].update(seed=1), "its manifest fields do not match their recorded digest"),
    ],
)
def test_a_part_journal_that_cannot_be_trusted_is_refused(tmp_path: Path, change, message: str) -> None:
    items, out = _samples(), tmp_path / "parts"
    for i in range(2):
        _part(out, items, i, 2)
    journal = out / journal_name("hard", Part.of(len(items), MAXCOUNT, 1, 2))
    data = json.loads(journal.read_text())
    change(data)
    journal.write_text(json.dumps(data))
    with pytest.raises(ShardError, match=message):
        publish_parts(out)
    assert not (out / "manifest.json").exists()
