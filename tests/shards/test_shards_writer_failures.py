"""The writer refuses bad input up front and never publishes a set it did not finish."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from synthkit.shards import (
    FORMAT,
    ShardError,
    ShardSetExistsError,
    ShardSetWriter,
    read_manifest,
    shard_name,
    validate_meta,
)
from synthkit.shards.layout import Part

META = {"kind": "hard", "producer": "test"}
IMAGE = np.zeros((2, 3, 3), np.uint8)


def _writer(out: Path, **kwargs) -> ShardSetWriter:
    return ShardSetWriter(out, "hard", manifest_fields={"producer": "test"}, **kwargs)


def _published(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def test_format_names_and_meta_schema():
    assert shard_name("hard", 7) == "hard-000007.tar"
    full = {
        "kind": "pair_b",
        "producer": "hpg",
        "generator_step": 3,
        "seed": 1,
        "latent_id": 2,
        "condition": None,
        "condition_source": "none",
        "condition_k": None,
        "hardness": 1,
        "pair_id": 4,
        "pair_similarity": 0.5,
        "extra": [1, 2],
    }
    assert validate_meta(full) == []
    problems = validate_meta({"kind": "bad", "seed": True, "hardness": float("nan"), "condition_source": "x"})
    assert len(problems) == 5  # kind, missing producer, seed, hardness, condition_source
    assert any("producer" in p for p in problems) and any("'kind'" in p for p in problems)
    assert validate_meta([]) != []


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((2, 3), np.float32), "uint8"),
        (np.zeros((2, 3, 4), np.uint8), "HxW"),
        (np.zeros((2, 3, 3, 1), np.uint8), "HxW"),
        (np.zeros((0, 3), np.uint8), "HxW"),
        ([[0]], "uint8"),
    ],
)
def test_bad_images_raise_value_error_naming_the_key(tmp_path, image, match):
    with _writer(tmp_path / "s") as w, pytest.raises(ValueError, match=rf"'k1'.*{match}"):
        w.write("k1", image, META)


@pytest.mark.parametrize("key", ["a.b", "a/b", "", "a b", "a\\b"])
def test_bad_keys_are_refused(tmp_path, key):
    with _writer(tmp_path / "s") as w, pytest.raises(ValueError, match="key"):
        w.write(key, IMAGE, META)


def test_bad_meta_cls_and_duplicate_keys_are_refused(tmp_path):
    with _writer(tmp_path / "s") as w:
        with pytest.raises(ValueError, match="'k'.*'kind'.*'producer'"):
            w.write("k", IMAGE, {"kind": "nope"})
        with pytest.raises(ValueError, match="JSON"):
            w.write("k", IMAGE, {**META, "x": object()})
        with pytest.raises(ValueError, match="cls"):
            w.write("k", IMAGE, META, cls="3")
        w.write("k", IMAGE, META)
        with pytest.raises(ValueError, match="already written"):
            w.write("k", IMAGE, META)
    assert read_manifest(tmp_path / "s")["total"] == 1  # refused samples left no trace


def test_reserved_or_unserialisable_manifest_fields_fail_early(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        ShardSetWriter(tmp_path / "s", "hard", manifest_fields={"total": 3})
    with pytest.raises(ValueError, match="JSON"):
        ShardSetWriter(tmp_path / "s", "hard", manifest_fields={"config": {1, 2}})
    with pytest.raises(ValueError, match="name"):
        ShardSetWriter(tmp_path / "s", "../up", manifest_fields={})


def test_exception_inside_with_publishes_nothing(tmp_path):
    out = tmp_path / "s"
    with pytest.raises(RuntimeError, match="boom"), _writer(out, maxcount=2) as w:
        for i in range(3):
            w.write(f"k{i}", IMAGE, META)
        raise RuntimeError("boom")
    assert _published(out) == ["hard-000000.tar"]  # the complete shard may stay; no temp, no manifest
    assert read_manifest(out) is None


def test_existing_set_is_refused_and_stale_temps_are_removed(tmp_path):
    out = tmp_path / "s"
    with _writer(out) as w:
        w.write("k", IMAGE, META)
    with pytest.raises(ShardSetExistsError, match=re.escape(str(out))):
        _writer(out)
    half = tmp_path / "half"
    half.mkdir()
    (half / "hard-000000.tar").write_bytes(b"")
    with pytest.raises(ShardSetExistsError, match="hard-000000.tar"):
        _writer(half)
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / ".hard-000003.tar.tmp").write_bytes(b"partial")
    (killed / "other-000000.tar").write_bytes(b"")  # another set's name: not ours to judge
    _writer(killed).close()
    assert _published(killed) == ["manifest.json", "other-000000.tar", "sizes.json"]


def _failing_write(code: int):
    def write(fd: int, data: bytes) -> int:
        raise OSError(code, os.strerror(code))

    return write


@pytest.mark.parametrize(
    ("fail_at", "code", "reason"),
    [
        ("shard", errno.ENOSPC, "disk full"),
        ("manifest", errno.ENOSPC, "disk full"),
        ("shard", errno.EACCES, "ermission"),
    ],
)
def test_os_errors_surface_as_shard_error_and_publish_nothing(tmp_path, monkeypatch, fail_at, code, reason):
    out = tmp_path / "s"
    with pytest.raises(ShardError, match=reason) as info, _writer(out, maxcount=2) as w:
        if fail_at == "shard":
            monkeypatch.setattr(os, "write", _failing_write(code))
        w.write("k0", IMAGE, META)
        w.write("k1", IMAGE, META)  # completes shard 0: its bytes reach os.write now
        monkeypatch.setattr(os, "write", _failing_write(code))
    monkeypatch.undo()
    expected = "hard-000000.tar" if fail_at == "shard" else "sizes.json"
    assert expected in str(info.value)
    assert read_manifest(out) is None
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert _published(out) == ([] if fail_at == "shard" else ["hard-000000.tar"])


def test_manifest_errors_are_clear(tmp_path):
    assert read_manifest(tmp_path) is None
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(ShardError, match="format"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": FORMAT, "version": 99}))
    with pytest.raises(ShardError, match="version"):
        read_manifest(tmp_path)
    bad_entry = {"name": "../x.tar", "count": 1, "bytes": 1, "sha256": "0" * 64}
    (tmp_path / "manifest.json").write_text(
        json.dumps({"format": FORMAT, "version": 1, "total": 1, "shards": [bad_entry]})
    )
    with pytest.raises(ShardError, match="unsafe"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ".hidden"}, r"shard set name '.hidden' must be letters"),
        ({"name": 3}, r"shard set name 3 must be letters"),
        ({"maxcount": 0}, "maxcount must be a positive integer, got 0"),
        ({"maxcount": True}, "maxcount must be a positive integer, got True"),
        ({"manifest_fields": ["producer"]}, "manifest_fields must be a dict, got list"),
        ({"manifest_fields": {"total": 3}}, r"may not set the reserved manifest keys \['total'\]"),
        ({"manifest_fields": {"seed": float("nan")}}, "manifest_fields is not JSON-serialisable"),
        ({"part": Part.of(4, 2, 0, 2)}, "a part of a set is always written resumably: pass resume=True"),
    ],
)
def test_bad_writer_arguments_are_refused_before_anything_is_created(tmp_path, kwargs, message):
    args = {"name": "hard", "maxcount": 2, "manifest_fields": {"producer": "test"}, **kwargs}
    with pytest.raises(ValueError, match=message):
        ShardSetWriter(tmp_path / "out", args.pop("name"), **args)
    assert not (tmp_path / "out").exists()
