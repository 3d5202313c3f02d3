"""The reader's own tar header parser: tars from other writers are read as tarfile reads them, or refused."""

from __future__ import annotations

import io
import json
import re
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthkit.shards import ShardError, iter_samples, iter_shard_members
from synthkit.shards.reader import SetRules, ShardRef, read_shard

META = json.dumps({"kind": "real", "producer": "test"}).encode()


def _png(width: int = 3, height: int = 2, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    Image.fromarray(np.arange(np.prod(shape), dtype=np.uint8).reshape(shape) % 251).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]], fmt: int, **kwargs) -> Path:
    with tarfile.open(path, "w", format=fmt, **kwargs) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _by_tarfile(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]  # type: ignore[union-attr]


def _by_reader(path: Path) -> list[tuple[str, bytes]]:
    return [(f"{key}.{ext}", data) for key, parts in iter_shard_members(path) for ext, data in parts.items()]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_long_and_unicode_names_read_as_tarfile_reads_them(tmp_path, fmt):
    key = "k" * 150 if fmt != tarfile.USTAR_FORMAT else "k" * 90  # ustar cannot hold a flat name > 100
    members = [(f"{key}.png", _png()), (f"{key}.json", META), ("é_ü.png", _png(4, 5)), ("é_ü.json", META)]
    path = _tar(tmp_path / "t.tar", members, fmt)
    assert _by_reader(path) == _by_tarfile(path) == members
    assert [s["__key__"] for s in iter_samples([path])] == [key, "é_ü"]


def test_pax_global_and_extended_records_are_applied(tmp_path):
    path = _tar(
        tmp_path / "g.tar",
        [("a.png", _png()), ("a.json", META)],
        tarfile.PAX_FORMAT,
        pax_headers={"comment": "made by hand"},
    )
    assert _by_reader(path) == _by_tarfile(path)


def test_ustar_prefix_is_joined_and_then_refused_as_a_directory(tmp_path):
    path = _tar(tmp_path / "p.tar", [("d" * 60 + "/" + "a" * 60 + ".png", _png())], tarfile.USTAR_FORMAT)
    with pytest.raises(ShardError, match=re.escape(str(path)) + ".*'d{60}/a{60}.png'.*flat"):
        list(iter_samples([path]))


def test_bad_header_checksum_is_refused_naming_the_shard(tmp_path):
    data = bytearray(
        _tar(tmp_path / "ok.tar", [("a.png", _png()), ("a.json", META)], tarfile.GNU_FORMAT).read_bytes()
    )
    for offset in (0, 512 * (1 + -(-len(_png()) // 512))):  # the first header, then the second
        bad = bytearray(data)
        bad[offset + 5] ^= 0x01  # a byte of the name; the stored checksum no longer matches
        path = tmp_path / f"bad{offset}.tar"
        path.write_bytes(bytes(bad))
        with pytest.raises(
            ShardError, match=re.escape(str(path)) + ".*corrupt or truncated.*bad header checksum"
        ):
            list(iter_samples([path]))


def _base256_tar(tmp_path: Path, size_field: bytes) -> Path:
    """One member whose size field is rewritten to ``size_field`` (checksum recomputed)."""
    png = _png()
    data = bytearray(
        _tar(tmp_path / "raw.tar", [("a.png", png), ("a.json", META)], tarfile.GNU_FORMAT).read_bytes()
    )
    data[124:136] = size_field
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    path = tmp_path / "b256.tar"
    path.write_bytes(bytes(data))
    return path


def test_base256_size_is_read_like_tarfile(tmp_path):
    path = _base256_tar(tmp_path, b"\x80" + len(_png()).to_bytes(11, "big"))
    assert _by_reader(path) == _by_tarfile(path)
    assert iter_samples([path]).__next__()["image"].shape == (2, 3, 3)


def test_negative_or_huge_base256_sizes_are_refused(tmp_path):
    path = _base256_tar(tmp_path, b"\xff" * 12)  # -1
    with pytest.raises(ShardError, match=re.escape(str(path)) + ".*negative member size"):
        list(iter_samples([path]))
    path = _base256_tar(tmp_path, b"\x80" + (1 << 80).to_bytes(11, "big"))
    with pytest.raises(ShardError, match=re.escape(str(path)) + ".*above the limit"):
        list(iter_samples([path]))


def test_invalid_octal_size_is_refused(tmp_path):
    path = _base256_tar(tmp_path, b"00000000x12\0")
    with pytest.raises(ShardError, match=re.escape(str(path)) + ".*invalid numeric header field"):
        list(iter_samples([path]))


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_cut_of_a_tar_is_refused_as_truncated(tmp_path, fmt):
    """Cut in a header, data, padding or the end block, or between members: always refused as truncated."""
    data = _tar(
        tmp_path / "full.tar", [("k" * 120 + ".png", _png()), ("k" * 120 + ".json", META)], fmt
    ).read_bytes()
    end = len(data.rstrip(b"\0"))
    padded = -(-end // 512) * 512  # one whole zero block after this is a complete archive, as for tarfile
    for cut in [*range(0, end, 97), *range(end, padded + 512, 37), padded]:
        path = tmp_path / "cut.tar"
        path.write_bytes(data[:cut])
        with pytest.raises(ShardError, match=re.escape(str(path)) + ".*truncated"):
            list(iter_shard_members(path))


def test_a_break_inside_a_sample_is_named_alike_by_both_readers(tmp_path):
    """The sample a break cuts is not given out (a member of it may be missing) and is counted as dropped;
    the complete samples before it are, and the break names the last of them."""
    members = [("a.png", _png()), ("a.json", META), ("b.png", _png()), ("b.json", META)]
    data = _tar(tmp_path / "full.tar", members, tarfile.GNU_FORMAT).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: data.index(b"b.json") + 512 + 10])  # inside the data of b.json
    got = []
    with pytest.raises(ShardError) as err:
        for key, parts in iter_shard_members(cut):
            got.append((key, sorted(parts)))
    assert got == [("a", ["json", "png"])]
    assert str(err.value) == f"{cut}: corrupt or truncated tar after sample 'a': unexpected end of data"
    read = read_shard(ShardRef(str(cut)))
    assert [s["__key__"] for s in read.samples] == ["a"]
    assert (read.broken, read.dropped, read.count) == (str(err.value), 1, 1)


def test_set_rules_give_each_key_to_one_shard():
    rules = SetRules()
    assert rules.key_problem("k", "a.tar") is None
    assert rules.key_problem("j", "b.tar") is None
    assert rules.key_problem("k", "b.tar") == "key also used in a.tar; keys must be unique in a set"
    assert rules.keys == {"k": "a.tar", "j": "b.tar"}


def test_empty_archive_and_sparse_members(tmp_path):
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"\0" * 1024)
    assert list(iter_samples([empty])) == []
    raw = bytearray(_tar(tmp_path / "s.tar", [("a.png", _png())], tarfile.GNU_FORMAT).read_bytes())
    raw[156:157] = b"S"
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    sparse = tmp_path / "sparse.tar"
    sparse.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="GNU sparse file; only regular files"):
        list(iter_samples([sparse]))


def test_pax_path_cannot_smuggle_a_pickle_or_traversal(tmp_path):
    for name, match in (
        ("../x.png", r"'\.\.'"),
        ("x.pyd", "'pyd' is not decoded"),
        ("/etc/x.png", "absolute"),
    ):
        path = _tar(tmp_path / "pax.tar", [(name, b"x")], tarfile.PAX_FORMAT, pax_headers={"path": name})
        with pytest.raises(ShardError, match=match):
            list(iter_samples([path]))


def test_decoded_images_match_pillow_and_are_writable(tmp_path):
    members = [("g.png", _png(5, 4, "L")), ("g.json", META), ("c.png", _png(5, 4)), ("c.json", META)]
    path = _tar(tmp_path / "i.tar", members, tarfile.GNU_FORMAT)
    gray, colour = iter_samples([path])
    assert gray["image"].shape == (4, 5, 1) and colour["image"].shape == (4, 5, 3)
    assert np.array_equal(gray["image"][:, :, 0], np.asarray(Image.open(io.BytesIO(members[0][1]))))
    assert np.array_equal(colour["image"], np.asarray(Image.open(io.BytesIO(members[2][1]))))
    assert gray["image"].flags.writeable and colour["image"].flags.writeable


def test_decompression_bomb_limit_still_applies_to_pngs(tmp_path, monkeypatch):
    path = _tar(tmp_path / "bomb.tar", [("a.png", _png(10, 10)), ("a.json", META)], tarfile.GNU_FORMAT)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60)  # 100 pixels: above it, under 2x: a warning in Pillow
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ShardError, match="decompression bomb"):
            list(iter_samples([path]))
