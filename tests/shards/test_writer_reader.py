"""Round trips: what ShardSetWriter writes is read back exactly by plain webdataset and by iter_samples."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from synthkit.shards import FORMAT, VERSION, iter_samples, read_manifest, sha256_file
from synthkit.shards.format import META_FIELDS, complete_meta


def _as_hwc(image: np.ndarray) -> np.ndarray:
    return image[:, :, None] if image.ndim == 2 else image


def read_with_plain_webdataset(urls: list[str]) -> list[tuple]:
    """The user's path: webdataset only, no synthkit, as documented in shards/README.md."""
    import webdataset as wds

    dataset = wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("__key__", "png", "json")
    raw = wds.WebDataset(urls, shardshuffle=False)  # undecoded, to see the stored PNG mode and cls bytes
    modes = {s["__key__"]: (Image.open(io.BytesIO(s["png"])).mode, s.get("cls")) for s in raw}
    return [(key, image, meta, *modes[key]) for key, image, meta in dataset]


def test_plain_webdataset_reads_what_the_writer_wrote(write_set, samples):
    out = write_set()
    urls = [str(out / s["name"]) for s in read_manifest(out)["shards"]]
    rows = read_with_plain_webdataset(urls)
    assert [r[0] for r in rows] == [s[0] for s in samples]
    for (key, rgb, meta, mode, cls_bytes), (_, image, want_meta, cls) in zip(rows, samples, strict=True):
        hwc = _as_hwc(image)
        assert mode == ("L" if hwc.shape[2] == 1 else "RGB"), key
        np.testing.assert_array_equal(rgb, np.broadcast_to(hwc, (*hwc.shape[:2], 3)))
        assert meta == complete_meta(want_meta)  # as written, with every schema field (null if absent)
        assert set(META_FIELDS) <= set(meta)
        assert cls_bytes == (None if cls is None else str(cls).encode())


def test_iter_samples_round_trip_from_directory_and_paths(write_set, samples):
    out = write_set()
    from_dir = list(iter_samples(out))
    from_paths = list(iter_samples(sorted(out.glob("hard-*.tar"))))
    for got in (from_dir, from_paths):
        assert [s["__key__"] for s in got] == [s[0] for s in samples]
        for sample, (_, image, meta, cls) in zip(got, samples, strict=True):
            assert sample["image"].dtype == np.uint8
            np.testing.assert_array_equal(sample["image"], _as_hwc(image))
            assert sample["meta"] == complete_meta(meta)
            assert sample["cls"] == cls
            assert Path(sample["__shard__"]).name.startswith("hard-")


def test_identical_inputs_give_byte_identical_shards_and_manifest(write_set):
    a, b = write_set("a"), write_set("b")
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())  # metadata tables included
    assert names == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert "metadata/000000.parquet" in names or "metadata/000000.csv" in names
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_tar_headers_are_pinned(write_set):
    out = write_set()
    with tarfile.open(out / "hard-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["s000.png", "s000.json", "s001.png", "s001.json", "s001.cls"]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o444)
        assert m.isreg()


def test_maxcount_splits_into_shards_and_manifest_describes_them(write_set):
    out = write_set(maxcount=2)
    manifest = read_manifest(out)
    assert [s["name"] for s in manifest["shards"]] == [
        "hard-000000.tar",
        "hard-000001.tar",
        "hard-000002.tar",
    ]
    assert [s["count"] for s in manifest["shards"]] == [2, 2, 1]
    assert (manifest["format"], manifest["version"], manifest["name"], manifest["total"]) == (
        FORMAT,
        VERSION,
        "hard",
        5,
    )
    assert (manifest["producer"], manifest["config"], manifest["seed"]) == ("test", {"a": 1}, 0)
    for entry in manifest["shards"]:
        path = out / entry["name"]
        assert entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == sha256_file(path)
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {"hard-000000.tar": 2, "hard-000001.tar": 2, "hard-000002.tar": 1}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_exact_multiple_of_maxcount_and_empty_set(write_set, samples):
    out = write_set("exact", maxcount=2, items=samples[:4])
    assert [s["count"] for s in read_manifest(out)["shards"]] == [2, 2]
    empty = write_set("empty", items=[])
    manifest = read_manifest(empty)
    assert (manifest["total"], manifest["shards"]) == (0, [])
    assert json.loads((empty / "sizes.json").read_text()) == {}
    assert list(iter_samples(empty)) == []
