"""A resumable writer resumes a killed set to the same bytes, keeping only shards its journal vouches for."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthkit.shards import ShardError, ShardSetExistsError, ShardSetWriter, read_manifest, sha256_file
from synthkit.shards.writer import JOURNAL_FORMAT, ShardResumeWarning, journal_name

FIELDS = {"producer": "test", "config": {"a": 1}, "seed": 0}
JOURNAL = journal_name("hard")
Sample = tuple[str, np.ndarray, dict[str, Any], int | None]  # as the `samples` fixture gives them


def _open(out: Path, **kwargs) -> ShardSetWriter:
    return ShardSetWriter(out, "hard", maxcount=2, manifest_fields=kwargs.pop("fields", FIELDS), **kwargs)


def _killed(out: Path, items: list[Sample]) -> None:
    """Write ``items`` and stop as a SIGKILL would: no close, no abort, the shard in progress left as is."""
    writer = _open(out, resume=True)
    for key, image, meta, cls in items:
        writer.write(key, image, meta, cls)
    if writer._shard is not None:  # the bytes a killed process had already handed to the OS stay behind
        writer._shard.file._flush()
        os.close(writer._shard.file._fd)
        writer._shard.file._fd = -1


def _files(out: Path) -> dict[str, bytes]:
    """Every file of the set, the metadata tables under metadata/ included."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _finish(out: Path, items: list[Sample], **kwargs) -> ShardSetWriter:
    writer = _open(out, resume=True, **kwargs)
    with writer:
        for key, image, meta, cls in items[writer.resume_from :]:
            writer.write(key, image, meta, cls)
    return writer


def test_journal_round_trip_and_byte_identical_resume(write_set, samples, tmp_path):
    ref = write_set("ref")
    out = tmp_path / "s"
    _killed(out, samples[:3])
    assert sorted(p.name for p in out.iterdir()) == [".hard-000001.tar.tmp", JOURNAL, "hard-000000.tar"]
    journal = json.loads((out / JOURNAL).read_text())
    assert journal["format"] == JOURNAL_FORMAT and journal["maxcount"] == 2 and journal["name"] == "hard"
    entry = journal["shards"][0]
    shard = out / "hard-000000.tar"
    assert len(journal["shards"]) == 1 and entry["name"] == shard.name and entry["count"] == 2
    assert entry["bytes"] == shard.stat().st_size and entry["sha256"] == sha256_file(shard)

    writer = _finish(out, samples)
    assert writer.resume_from == 2 and writer.total == len(samples)
    assert _files(out) == _files(ref)  # temp gone, journal removed on publish, same shards and manifest


def test_unrecorded_shards_and_temps_are_deleted(write_set, samples, tmp_path):
    ref = write_set("ref")
    out = tmp_path / "s"
    _killed(out, samples[:2])
    # a shard that reached its final name without a journal entry cannot be trusted: never ours to keep
    (out / "hard-000001.tar").write_bytes((ref / "hard-000001.tar").read_bytes())
    (out / ".hard-000002.tar.tmp").write_bytes(b"partial")
    (out / "other-000000.tar").write_bytes(b"another set")
    writer = _open(out, resume=True)
    assert writer.resume_from == 2 and [s["name"] for s in writer.completed_shards] == ["hard-000000.tar"]
    assert sorted(p.name for p in out.iterdir()) == [JOURNAL, "hard-000000.tar", "other-000000.tar"]


def test_shard_killed_between_journal_and_rename_is_published(write_set, samples, tmp_path):
    ref = write_set("ref")
    out = tmp_path / "s"
    _killed(out, samples[:4])
    final = out / "hard-000001.tar"
    final.rename(out / ".hard-000001.tar.tmp")  # the journal lists it; the rename had not happened yet
    writer = _finish(out, samples)
    assert writer.resume_from == 4
    assert _files(out) == _files(ref)


def test_tampered_shard_is_rewritten_with_a_warning(write_set, samples, tmp_path):
    ref = write_set("ref")
    out = tmp_path / "s"
    _killed(out, samples[:4])
    shard = out / "hard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.warns(ShardResumeWarning, match=r"hard-000000\.tar.*does not match its journal"):
        writer = _finish(out, samples)
    assert writer.resume_from == 0
    assert _files(out) == _files(ref)


def test_truncated_later_shard_keeps_the_prefix(write_set, samples, tmp_path):
    ref = write_set("ref")
    out = tmp_path / "s"
    _killed(out, samples[:4])
    shard = out / "hard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:512])
    with pytest.warns(ShardResumeWarning, match=r"hard-000001\.tar"):
        writer = _finish(out, samples)
    assert writer.resume_from == 2
    assert _files(out) == _files(ref)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"fields": {**FIELDS, "seed": 1}}, "fields_sha256"), ({"maxcount": 3}, "maxcount")],
)
def test_a_journal_of_another_request_is_refused(samples, tmp_path, change, message):
    out = tmp_path / "s"
    _killed(out, samples[:3])
    before = _files(out)
    fields = change.get("fields", FIELDS)
    with pytest.raises(ShardSetExistsError, match=f"different request.*{message}"):
        ShardSetWriter(out, "hard", maxcount=change.get("maxcount", 2), manifest_fields=fields, resume=True)
    assert _files(out) == before


def test_foreign_shards_without_journal_and_published_sets_are_refused(write_set, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "hard-000000.tar").write_bytes(b"not ours")
    with pytest.raises(ShardSetExistsError, match="without a manifest or a journal"):
        _open(foreign, resume=True)
    assert _files(foreign) == {"hard-000000.tar": b"not ours"}
    done = write_set("done")
    with pytest.raises(ShardSetExistsError, match="published"):
        _open(done, resume=True)


def test_corrupt_journal_is_refused_naming_it(samples, tmp_path):
    out = tmp_path / "s"
    _killed(out, samples[:3])
    (out / JOURNAL).write_text("{broken")
    with pytest.raises(ShardError, match=rf"{JOURNAL}.*cannot read the resume journal"):
        _open(out, resume=True)


def test_resume_after_the_last_partial_shard_only_publishes(write_set, samples, tmp_path):
    ref = write_set("ref")
    out = tmp_path / "s"
    writer = _open(out, resume=True)
    for key, image, meta, cls in samples:
        writer.write(key, image, meta, cls)
    writer._finish_shard()  # killed after the last shard, before sizes.json and the manifest
    writer = _open(out, resume=True)
    assert writer.resume_from == len(samples)
    with pytest.raises(ValueError, match="only close"):
        writer.write("extra", *samples[0][1:3])
    writer.close()
    assert _files(out) == _files(ref) and not (out / JOURNAL).exists()
    assert read_manifest(out)["total"] == len(samples)


def test_disk_full_on_the_journal_publishes_nothing(samples, tmp_path, monkeypatch):
    out = tmp_path / "s"
    _killed(out, samples[:2])
    journal_before = (out / JOURNAL).read_bytes()
    writer = _open(out, resume=True)
    real_write = os.write
    journal_temp = out / f".{JOURNAL}.tmp"

    def write(fd: int, data: bytes) -> int:
        if journal_temp.exists() and os.path.samestat(os.fstat(fd), os.stat(journal_temp)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    writer.write(*samples[2])
    with pytest.raises(ShardError, match=rf"{JOURNAL}: disk full.*not published"):
        writer.write(*samples[3])  # completes shard 1: its journal entry cannot be written
    monkeypatch.undo()
    # shard 1 never reached its final name, the old journal is intact, no temp is left
    assert sorted(p.name for p in out.iterdir()) == [JOURNAL, "hard-000000.tar"]
    assert (out / JOURNAL).read_bytes() == journal_before
    assert _open(out, resume=True).resume_from == 2


def test_without_resume_no_journal_is_written(write_set, tmp_path):
    out = write_set("plain")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
