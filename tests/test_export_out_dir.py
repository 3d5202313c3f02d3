"""What an export finds in its --out before it writes: a set directory's unfinished states, one at a time.

The published states (the same request again, a different set in the way) are run end to end in
tests/cli/test_cli.py; here :func:`synthkit.export.prepare_out_dir` meets each unfinished directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthkit.atomic import temp_name
from synthkit.errors import ShardSetExistsError
from synthkit.export import IN_PROGRESS, PREVIEW, prepare_out_dir

NAME = "hard"
REQUEST = {"run": "r", "seed": 0, "counts": {"hard": 8}}


def _tar(out: Path, i: int) -> Path:
    path = out / f"{NAME}-{i:06d}.tar"
    path.write_bytes(b"x" * 10)
    return path


def test_a_new_directory_is_made_and_marked_as_this_request(tmp_path: Path) -> None:
    out = tmp_path / "a" / "set"
    assert prepare_out_dir(out, NAME, REQUEST) is None
    assert json.loads((out / IN_PROGRESS).read_text()) == REQUEST
    # the same request again resumes (its marker says the directory is its own)
    assert prepare_out_dir(out, NAME, REQUEST) is None


def test_an_export_split_into_parts_is_finished_by_as_many_parts(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    (out / f".{NAME}.part-00001-of-00003.journal.json").write_text("{}")
    (out / ".other.part-00000-of-00002.journal.json").write_text("{}")  # another set's: not this one's
    with pytest.raises(ShardSetExistsError, match="split into 3 parts; finish it with 3 processes"):
        prepare_out_dir(out, NAME, REQUEST)
    assert not (out / IN_PROGRESS).exists()


def test_shards_this_export_did_not_start_are_refused_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    shards = [_tar(out, 0), _tar(out, 1)]
    (out / IN_PROGRESS).write_text(json.dumps({**REQUEST, "seed": 1}))  # another request's
    with pytest.raises(
        ShardSetExistsError, match=r"shards without a manifest that this export did not start \(2"
    ):
        prepare_out_dir(out, NAME, REQUEST)
    assert all(p.exists() for p in shards)
    (out / IN_PROGRESS).unlink()
    (out / f".{NAME}.journal.json").write_text("{}")  # a journal alone is someone's unfinished set too
    for p in shards:
        p.unlink()
    with pytest.raises(ShardSetExistsError, match=r"did not start \(0 files\)"):
        prepare_out_dir(out, NAME, REQUEST)


def test_our_own_shards_stay_with_a_journal_and_go_without_one(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    (out / IN_PROGRESS).write_text(json.dumps(REQUEST))
    other_set = out / f"{NAME}-other-000000.tar"
    other_set.write_bytes(b"y")
    shard = _tar(out, 0)
    for temp in (temp_name(IN_PROGRESS), temp_name(PREVIEW)):  # what a kill mid-write leaves
        (out / temp).write_text("half")
    (out / f".{NAME}.journal.json").write_text("{}")
    assert prepare_out_dir(out, NAME, REQUEST) is None
    assert shard.exists()  # the journal vouches for it: the writer resumes from it
    assert not any((out / temp_name(n)).exists() for n in (IN_PROGRESS, PREVIEW))
    (out / f".{NAME}.journal.json").unlink()
    assert prepare_out_dir(out, NAME, REQUEST) is None
    assert not shard.exists() and other_set.exists()  # nothing vouches for it; another set's file stays
