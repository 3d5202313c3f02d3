"""The safe reader refuses hostile or broken shards with a ShardError that names the shard."""

from __future__ import annotations

import io
import json
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthkit.shards import ShardError, iter_samples

META = json.dumps({"kind": "real", "producer": "test"}).encode()


def _png(width: int = 3, height: int = 2) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _make_tar(path: Path, members: list[tuple[str, bytes] | tarfile.TarInfo]) -> Path:
    """Hand-made tar: (name, data) regular members, or a TarInfo for links and other special members."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _read(path: Path, **kwargs) -> list[dict]:
    return list(iter_samples([path], **kwargs))


def test_hand_made_good_tar_is_read(tmp_path):
    path = _make_tar(tmp_path / "ok.tar", [("a.png", _png()), ("a.json", META), ("a.cls", b"7")])
    [sample] = _read(path)
    assert (sample["__key__"], sample["image"].shape, sample["cls"]) == ("a", (2, 3, 3), 7)


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([("../evil.png", _png()), ("../evil.json", META)], r"'\.\.'"),
        ([("/abs.png", _png())], "absolute"),
        ([("dir/a.png", _png())], "flat"),
        ([_link("a.png", "/etc/passwd", tarfile.SYMTYPE)], "symlink"),
        ([_link("a.png", "b.png", tarfile.LNKTYPE)], "hard link"),
        ([_link("a.png", "", tarfile.DIRTYPE)], "directory"),
        ([("a.png", _png()), ("a.json", META), ("a.pyd", pickle.dumps({"x": 1}))], "'pyd' is not decoded"),
        ([("a.pickle", pickle.dumps(1))], "'pickle' is not decoded"),
        ([("a.pth", b"x")], "'pth' is not decoded"),
        ([("a.seg.png", _png())], "'seg.png' is not decoded"),
        ([("noext", b"x")], "KEY.EXT"),
        ([("a.png", _png())], "no json"),
        ([("a.json", META)], "image"),
        ([("a.png", _png()), ("a.jpg", _png()), ("a.json", META)], "exactly one image"),
        ([("a.png", b"not a png"), ("a.json", META)], "cannot decode image"),
        ([("a.png", _png()), ("a.json", b"{bad")], "invalid JSON"),
        ([("a.png", _png()), ("a.json", b"[1]")], "must be an object"),
        ([("a.png", _png()), ("a.json", META), ("a.cls", b"1.5")], "cls"),
        (
            [("a.png", _png()), ("a.json", META), ("b.png", _png()), ("b.json", META), ("a.cls", b"1")],
            "twice",
        ),
    ],
)
def test_hostile_or_broken_members_are_refused(tmp_path, members, match):
    path = _make_tar(tmp_path / "bad.tar", members)
    with pytest.raises(ShardError, match=match) as info:
        _read(path)
    assert str(path) in str(info.value)


def test_oversized_image_is_refused_before_decoding(tmp_path):
    path = _make_tar(tmp_path / "big.tar", [("a.png", _png(10, 10)), ("a.json", META)])
    with pytest.raises(ShardError, match=re.escape(str(path)) + ".*10x10 = 100 pixels"):
        _read(path, max_pixels=99)
    assert _read(path, max_pixels=100)[0]["image"].shape == (10, 10, 3)


def test_truncated_tars_are_refused(tmp_path):
    data = _make_tar(
        tmp_path / "full.tar",
        [(f"k{i}.{e}", _png() if e == "png" else META) for i in range(2) for e in ("png", "json")],
    ).read_bytes()
    with tarfile.open(tmp_path / "full.tar") as tar:
        boundary = tar.getmembers()[2].offset  # k1's header: a cut tarfile would silently accept
    for cut in (len(data) // 3, boundary, 100):
        path = tmp_path / f"cut{cut}.tar"
        path.write_bytes(data[:cut])
        with pytest.raises(ShardError, match=re.escape(str(path)) + ".*(truncated|corrupt)"):
            _read(path)
