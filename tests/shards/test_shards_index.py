"""The wids index: its layout, random access through it matching sequential reading, safe decoding.

``wids`` is distributed as its own package since webdataset 1.0 and is not installed with webdataset 1.0.2,
so the check with the real ``wids.ShardListDataset`` runs only where it is installed. Without it, random
access is checked with a reference resolver that maps a global index to (shard, position) the way
``ShardListDataset.get_shard`` does (``searchsorted`` over the cumulative ``nsamples``, urls relative to
the index file) and reads that tar member by member index.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from synthkit.shards import ShardError, iter_samples, iter_shard_members, read_manifest
from synthkit.shards.index import WIDS_INDEX, decode_wids_sample, write_wids_index


def _tar_members(path: Path) -> list[tuple[str, bytes]]:
    """Walk raw 512-byte tar headers as wids' mmap reader does (name field, 11 octal digits of size, regular
    files only), so the test also checks that our GNU-format headers parse the simple way."""
    data, offset, members = path.read_bytes(), 0, []
    while offset + 512 <= len(data) and data[offset : offset + 512].strip(b"\0"):
        header = data[offset : offset + 512]
        name = header[:100].rstrip(b"\0").decode()
        size = int(header[124:136].decode()[:-1], 8)
        if header[156:157] in (b"0", b"\0"):
            members.append((name, data[offset + 512 : offset + 512 + size]))
        offset += 512 + (size + 511) // 512 * 512
    return members


def _raw_by_position(index_path: Path, i: int) -> tuple[str, dict[str, bytes]]:
    """Reference random access: global index -> (key, {".ext": bytes}) as wids resolves and groups it."""
    index = json.loads(index_path.read_text())
    cum = np.cumsum([s["nsamples"] for s in index["shardlist"]])
    shard_idx = int(np.searchsorted(cum, i, side="right"))
    inner = i - (int(cum[shard_idx - 1]) if shard_idx else 0)
    groups: dict[str, dict[str, bytes]] = {}
    for name, data in _tar_members(index_path.parent / index["shardlist"][shard_idx]["url"]):
        key, _, ext = name.partition(".")
        groups.setdefault(key, {})[f".{ext}"] = data
    key = list(groups)[inner]
    return key, groups[key]


def test_index_layout_and_atomic_write(write_set):
    out = write_set(maxcount=2)
    path = write_wids_index(out)
    assert path == out / WIDS_INDEX
    index = json.loads(path.read_text())
    manifest = read_manifest(out)
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1
    assert index["name"].startswith("hard-") and len(index["name"]) == len("hard-") + 12
    assert index["shardlist"] == [
        {"url": s["name"], "nsamples": s["count"], "filesize": s["bytes"]} for s in manifest["shards"]
    ]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left behind
    assert write_wids_index(out).read_text() == path.read_text()  # rewriting is a no-op
    assert json.loads(write_wids_index(out, name="mine").read_text())["name"] == "mine"


def test_sets_with_the_same_name_get_different_cache_names(write_set, samples):
    a = json.loads(write_wids_index(write_set("a")).read_text())["name"]
    b = json.loads(write_wids_index(write_set("b", items=samples[:3])).read_text())["name"]
    assert a != b


def test_random_access_through_the_index_matches_sequential_reading(write_set):
    out = write_set(maxcount=2)
    path = write_wids_index(out)
    sequential = [
        (key, parts)
        for s in read_manifest(out)["shards"]
        for key, parts in iter_shard_members(out / s["name"])
    ]
    for i in [4, 0, 3, 1, 2]:
        key, raw = _raw_by_position(path, i)
        assert key == sequential[i][0]
        assert raw[".png"] == sequential[i][1]["png"]
        decoded = decode_wids_sample({**raw, "__key__": key, "__shard__": "x.tar", "__shardindex__": 0})
        want = list(iter_samples(out))[i]
        np.testing.assert_array_equal(decoded["image"], want["image"])
        assert (decoded["meta"], decoded["cls"], decoded["__shardindex__"]) == (want["meta"], want["cls"], 0)


def test_decode_wids_sample_refuses_pickles_and_reads_streams():
    with pytest.raises(ShardError, match="'pickle' is not decoded"):
        decode_wids_sample({"__key__": "a", ".pickle": b"\x80\x04K\x01.", ".json": b"{}"})
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.zeros((2, 3), np.uint8)).save(png, format="PNG")
    sample = decode_wids_sample({"__key__": "a", ".png": io.BytesIO(png.getvalue()), ".json": b'{"x": 1}'})
    assert sample["image"].shape == (2, 3, 1) and sample["meta"] == {"x": 1}


def test_unpublished_or_empty_set_is_refused(tmp_path, write_set):
    (tmp_path / "bare").mkdir()
    with pytest.raises(ShardError, match="no manifest"):
        write_wids_index(tmp_path / "bare")
    with pytest.raises(ShardError, match="no shards"):
        write_wids_index(write_set("empty", items=[]))


def test_real_wids_reads_the_index(write_set, tmp_path):
    wids = pytest.importorskip("wids", reason="wids is a separate package since webdataset 1.0")
    out = write_set(maxcount=2)
    path = write_wids_index(out)
    ds = wids.ShardListDataset(
        str(path), cache_dir=str(tmp_path / "cache"), transformations=[decode_wids_sample]
    )
    want = list(iter_samples(out))
    assert len(ds) == len(want)
    for i in [3, 0, 4]:
        got = ds[i]
        assert got["__key__"] == want[i]["__key__"]
        np.testing.assert_array_equal(got["image"], want[i]["image"])
