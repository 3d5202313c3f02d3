"""The writer's parts on their own: the open tar shard, the resume journal and the output directory."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from synthkit.shards import ShardError, ShardSetExistsError, sha256_file
from synthkit.shards.directory import SetDirectory
from synthkit.shards.files import OpenShard
from synthkit.shards.journal import ShardJournal, ShardResumeWarning
from synthkit.shards.layout import Part

FIELDS = {"producer": "test", "seed": 0}


def _shard(directory: Path, name: str, samples: int) -> dict:
    """A real, renamed shard of ``samples`` one-member samples; its journal entry."""
    shard = OpenShard(directory / name)
    for i in range(samples):
        shard.add([(f"k{i}.txt", f"sample {i} of {name}".encode())])
    entry = shard.seal()
    shard.rename()
    return entry


def test_an_open_shard_is_a_pinned_tar_whose_entry_matches_its_file(tmp_path: Path) -> None:
    entry = _shard(tmp_path, "hard-000000.tar", 2)
    path = tmp_path / "hard-000000.tar"
    assert entry == {"name": path.name, "count": 2, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["k0.txt", "k1.txt"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
            (0, 0, 0, "", "", 0o444)
        }
        assert tar.extractfile(members[1]).read() == b"sample 1 of hard-000000.tar"
    # the same samples again: the same bytes
    (tmp_path / "again").mkdir()
    assert _shard(tmp_path / "again", "hard-000000.tar", 2)["sha256"] == entry["sha256"]


def test_a_discarded_shard_leaves_no_file(tmp_path: Path) -> None:
    shard = OpenShard(tmp_path / "hard-000000.tar")
    shard.add([("k.txt", b"x")])
    shard.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_recorded_journal_reads_back_and_refuses_other_requests(tmp_path: Path) -> None:
    journal = ShardJournal(tmp_path, "hard", 2, FIELDS, None)
    shards = [_shard(tmp_path, "hard-000000.tar", 2), _shard(tmp_path, "hard-000001.tar", 1)]
    journal.record(shards)
    assert journal.path.name == ".hard.journal.json"
    assert journal.read() == shards
    with pytest.raises(ShardSetExistsError, match=r"differs in maxcount, fields_sha256"):
        ShardJournal(tmp_path, "hard", 3, {"producer": "other"}, None).read()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda j: j.update(format="other"), "not a synthkit-shards-journal file"),
        (lambda j: j.update(version=2), "journal version 2"),
        (lambda j: j.update(shards={}), "'shards' must be a list"),
        (lambda j: j["shards"][0].update(count=3), r"shards\[0\] is malformed"),  # above maxcount
        (lambda j: j["shards"][0].update(count=1), r"shards\[0\] is malformed"),  # short, not last
        (lambda j: j["shards"][1].update(name="hard-000005.tar"), r"shards\[1\] is malformed"),
        (lambda j: j["shards"][1].update(bytes=True), r"shards\[1\] is malformed"),
        (lambda j: j["shards"][1].pop("sha256"), r"shards\[1\] is malformed"),
    ],
)
def test_a_journal_that_cannot_be_trusted_is_refused(tmp_path: Path, change, message: str) -> None:
    journal = ShardJournal(tmp_path, "hard", 2, FIELDS, None)
    journal.record([_shard(tmp_path, "hard-000000.tar", 2), _shard(tmp_path, "hard-000001.tar", 1)])
    data = json.loads(journal.path.read_text())
    change(data)
    journal.path.write_text(json.dumps(data))
    with pytest.raises(ShardError, match=message) as err:
        journal.read()
    assert "remove the directory to start over" in str(err.value)


def test_a_parts_journal_holds_no_more_shards_than_the_part(tmp_path: Path) -> None:
    part = Part.of(total=6, maxcount=2, index=1, count=2)  # 3 shards: part 1 holds shards 1-2
    journal = ShardJournal(tmp_path, "hard", 2, FIELDS, part)
    assert journal.path.name == ".hard.part-00001-of-00002.journal.json"
    entries = [
        _shard(tmp_path, f"hard-{k:06d}.tar", 2) for k in range(part.first_shard, part.first_shard + 3)
    ]
    journal.record(entries)
    with pytest.raises(ShardError, match="more shards than part 1"):
        journal.read()
    journal.record(entries[: part.shards], complete=True, shapes={(4, 5, 3)})
    data = json.loads(journal.path.read_text())
    assert data["complete"] is True and data["image_shapes"] == [[4, 5, 3]] and data["fields"] == FIELDS
    assert journal.read() == entries[: part.shards]


def test_the_kept_prefix_ends_at_the_first_changed_or_missing_shard(tmp_path: Path) -> None:
    journal = ShardJournal(tmp_path, "hard", 1, FIELDS, None)
    shards = [_shard(tmp_path, f"hard-{k:06d}.tar", 1) for k in range(3)]
    names = {p.name for p in tmp_path.iterdir()}
    assert journal.keep_matching(shards, names) == shards
    (tmp_path / shards[1]["name"]).write_bytes(b"changed")
    with pytest.warns(ShardResumeWarning, match="hard-000001.tar: does not match its journal entry"):
        assert journal.keep_matching(shards, names) == shards[:1]
    assert journal.keep_matching(shards, names - {shards[0]["name"]}) == []


def test_a_last_shard_killed_before_its_rename_is_renamed(tmp_path: Path) -> None:
    journal = ShardJournal(tmp_path, "hard", 1, FIELDS, None)
    shards = [_shard(tmp_path, f"hard-{k:06d}.tar", 1) for k in range(2)]
    (tmp_path / shards[1]["name"]).rename(tmp_path / f".{shards[1]['name']}.tmp")
    names = {p.name for p in tmp_path.iterdir()}
    assert journal.keep_matching(shards, names) == shards
    assert (tmp_path / shards[1]["name"]).is_file() and not (tmp_path / f".{shards[1]['name']}.tmp").exists()
    # not the last shard: written again, whatever its temp file holds
    (tmp_path / shards[0]["name"]).rename(tmp_path / f".{shards[0]['name']}.tmp")
    assert journal.keep_matching(shards, {p.name for p in tmp_path.iterdir()}) == []


def test_a_new_writers_directory_refuses_a_set_and_drops_stale_temps(tmp_path: Path) -> None:
    directory = SetDirectory(ShardJournal(tmp_path / "out", "hard", 2, FIELDS, None))
    assert directory.prepare(resume=False) == []
    (tmp_path / "out" / ".hard-000000.tar.tmp").write_bytes(b"killed")
    (tmp_path / "out" / ".manifest.json.tmp").write_bytes(b"killed")
    assert directory.prepare(resume=False) == []
    assert list((tmp_path / "out").iterdir()) == []
    _shard(tmp_path / "out", "hard-000000.tar", 2)
    with pytest.raises(ShardSetExistsError, match=r"already holds shard set files \(hard-000000.tar\)"):
        directory.prepare(resume=False)


def test_a_resumed_directory_keeps_the_journaled_shards_and_removes_the_rest(tmp_path: Path) -> None:
    journal = ShardJournal(tmp_path, "hard", 2, FIELDS, None)
    kept = _shard(tmp_path, "hard-000000.tar", 2)
    journal.record([kept])
    _shard(tmp_path, "hard-000001.tar", 2)  # written, never journaled (killed before the journal update)
    assert SetDirectory(journal).prepare(resume=True) == [kept]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hard.journal.json", "hard-000000.tar"]


def test_shards_without_a_journal_are_not_resumed(tmp_path: Path) -> None:
    _shard(tmp_path, "hard-000000.tar", 2)
    with pytest.raises(ShardSetExistsError, match="shards without a manifest or a journal"):
        SetDirectory(ShardJournal(tmp_path, "hard", 2, FIELDS, None)).prepare(resume=True)


def test_a_part_touches_only_its_own_files(tmp_path: Path) -> None:
    part = Part.of(total=8, maxcount=2, index=0, count=2)  # shards 0-1; part 1 writes 2-3
    journal = ShardJournal(tmp_path, "hard", 2, FIELDS, part)
    others = [_shard(tmp_path, f"hard-{k:06d}.tar", 2) for k in (2, 3)]
    (tmp_path / ".hard-000003.tar.tmp").write_bytes(b"part 1 at work")
    (tmp_path / ".hard-000001.tar.tmp").write_bytes(b"part 0, killed")
    directory = SetDirectory(journal)
    assert directory.own == {"hard-000000.tar", "hard-000001.tar"}
    assert directory.prepare(resume=True) == []
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".hard-000003.tar.tmp", journal.path.name, *(s["name"] for s in others)]
