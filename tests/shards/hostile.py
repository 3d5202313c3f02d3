"""A corpus of hostile and damaged shard sets, made by code (never binary files in git).

Each case is a function that writes one shard set into a directory and returns what a correct consumer must
do with it: refuse it (naming the shard and, where there is one, the sample key), or read it as data when the
case is hostile only to careless printing (terminal escapes). The classes follow issue 17: tampered content
with the manifest intact, set-level inconsistency, files that are not regular files, images that do not fit
the set, metadata that is not what the format says, and members that must never be decoded.

Most cases are written by a *hostile writer*: the manifest's hashes and sizes are correct for the bytes, so
only the deeper checks (structure, counts, keys, images, metadata) can catch them. The "tampered" cases
change bytes after publication, so the sha256 check catches them first.

``test_hostile_corpus.py`` runs every case against every consumer and checks the resulting table,
``tests/shards/HOSTILE.md``, against a fresh run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 8  # side of the good images: tiny, so the corpus is written in milliseconds
PER_SHARD = 3


@dataclass
class Case:
    """What a case expects: ``bad`` keys must never be yielded, ``good`` keys must be yielded by on_error=skip
    (None: no promise, e.g. a whole shard is refused); ``shard`` is the file a refusal must name; ``key`` the
    sample it must name (None: a shard- or set-level problem); ``valid``: the set is data, not an attack."""

    shard: str | None
    key: str | None = None
    bad: set[str] = field(default_factory=set)
    good: set[str] | None = None
    valid: bool = False
    local_only: bool = False  # a file-system attack (FIFO, device link): there is no such thing over HTTP


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def gray(value: int, size: int = SIZE) -> np.ndarray:
    return np.full((size, size), value, np.uint8)


def meta(i: int, **extra: object) -> bytes:
    return json.dumps({"kind": "hard", "producer": "test", "seed": 0, "latent_id": i, **extra}).encode()


def key(i: int) -> str:
    return f"s{i:04d}"


def good_members(i: int) -> list[tuple[str, bytes]]:
    return [(f"{key(i)}.png", png(gray(10 * i))), (f"{key(i)}.json", meta(i))]


def tar_bytes(members: list[tuple[str, bytes] | tarfile.TarInfo]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def publish(out: Path, shards: list[bytes], *, counts: list[int] | None = None, **fields: object) -> Path:
    """Write ``shards`` as set ``h`` with a manifest whose sizes and hashes are true for these bytes."""
    out.mkdir(parents=True)
    entries = []
    for i, data in enumerate(shards):
        name = f"h-{i:06d}.tar"
        (out / name).write_bytes(data)
        count = counts[i] if counts is not None else _count(data)
        entries.append(
            {"name": name, "count": count, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    manifest = {
        "format": "synthkit-shards",
        "version": 1,
        "name": "h",
        "producer": "hostile",
        "shards": entries,
        "total": sum(e["count"] for e in entries),
        **fields,
    }
    (out / "sizes.json").write_text(json.dumps({e["name"]: e["count"] for e in entries}))
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _count(data: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return len({m.name.rsplit("/", 1)[-1].partition(".")[0] for m in tar.getmembers()})


def standard(
    out: Path, replace: dict[int, list[tuple[str, bytes] | tarfile.TarInfo]] | None = None, **kw: object
) -> Path:
    """Two shards of three good samples (keys s0000..s0005); ``replace[i]`` swaps sample i's members."""
    replace = replace or {}
    shards = []
    for s in range(2):
        members: list[tuple[str, bytes] | tarfile.TarInfo] = []
        for i in range(s * PER_SHARD, (s + 1) * PER_SHARD):
            members += replace.get(i, good_members(i))
        shards.append(tar_bytes(members))
    return publish(out, shards, **kw)  # type: ignore[arg-type]


ALL = {key(i) for i in range(2 * PER_SHARD)}
FIRST, SECOND = {key(i) for i in range(PER_SHARD)}, {key(i) for i in range(PER_SHARD, 2 * PER_SHARD)}
S0, S1 = "h-000000.tar", "h-000001.tar"


def _refuse_sample(i: int, members: list[tuple[str, bytes] | tarfile.TarInfo]) -> Callable[[Path], Case]:
    def build(out: Path) -> Case:
        standard(out, {i: members})
        return Case(S0 if i < PER_SHARD else S1, key(i), bad={key(i)}, good=ALL - {key(i)})

    return build


def _flip(offset_of: Callable[[bytes], int]) -> Callable[[Path], Case]:
    """Change one byte of shard 0 after publication: the manifest no longer matches."""

    def build(out: Path) -> Case:
        standard(out)
        path = out / S0
        data = bytearray(path.read_bytes())
        data[offset_of(bytes(data))] ^= 0x01
        path.write_bytes(bytes(data))
        return Case(S0, bad=FIRST, good=SECOND)

    return build


def _png_data_offset(data: bytes) -> int:
    return data.index(b"IDAT") + 6


def _json_digit_offset(data: bytes) -> int:
    return data.index(b'"latent_id": 1') + len(b'"latent_id": ')


def _padding_offset(data: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        first = tar.getmembers()[0]
    return first.offset_data + first.size + 3  # inside the zero padding after the first member


def _crc_offset(data: bytes) -> int:
    return data.index(b"IEND") - 5  # the last byte of the IDAT chunk's CRC (before IEND's length)


def truncated(out: Path) -> Case:
    standard(out)
    path = out / S1
    path.write_bytes(path.read_bytes()[:1500])
    return Case(S1, bad=SECOND, good=FIRST)


def longer(out: Path) -> Case:
    standard(out)
    with open(out / S1, "ab") as f:
        f.write(b"\0" * 512)
    return Case(S1, bad=SECOND, good=FIRST)


def dup_key_across_shards(out: Path) -> Case:
    standard(out, {4: [(f"{key(1)}.png", png(gray(200))), (f"{key(1)}.json", meta(1))]})
    return Case(S1, key(1), bad=set(), good=ALL - {key(4)})


def dup_key_later_in_tar(out: Path) -> Case:
    members = (
        good_members(0) + good_members(1) + [(f"{key(0)}.png", png(gray(99))), (f"{key(0)}.json", meta(0))]
    )
    publish(out, [tar_bytes(members)], counts=[3])
    return Case(S0, key(0), good={key(0), key(1)})


def _total(total: int) -> Callable[[Path], Case]:
    def build(out: Path) -> Case:
        standard(out)
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["total"] = total
        (out / "manifest.json").write_text(json.dumps(manifest))
        return Case("manifest.json", bad=ALL)

    return build


def count_mismatch(out: Path) -> Case:
    standard(out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][1]["count"], manifest["total"] = 4, 7  # total agrees: only the shard can tell
    (out / "manifest.json").write_text(json.dumps(manifest))
    return Case(S1, bad=SECOND, good=FIRST)


def empty_tar(out: Path) -> Case:
    publish(out, [tar_bytes([m for i in range(3) for m in good_members(i)]), tar_bytes([])], counts=[3, 1])
    return Case(S1, good=FIRST)


def zero_count_shard(out: Path) -> Case:
    publish(out, [tar_bytes([m for i in range(3) for m in good_members(i)]), tar_bytes([])], counts=[3, 0])
    return Case("manifest.json", bad=FIRST)


def listed_twice(out: Path) -> Case:
    standard(out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][1] = dict(manifest["shards"][0])
    manifest["total"] = 6
    (out / "manifest.json").write_text(json.dumps(manifest))
    return Case("manifest.json", bad=ALL)


def fifo(out: Path) -> Case:
    standard(out)
    (out / S1).unlink()
    os.mkfifo(out / S1)
    return Case(S1, bad=SECOND, good=FIRST, local_only=True)


def dev_zero(out: Path) -> Case:
    standard(out)
    (out / S1).unlink()
    (out / S1).symlink_to("/dev/zero")
    return Case(S1, bad=SECOND, good=FIRST, local_only=True)


def directory_shard(out: Path) -> Case:
    standard(out)
    (out / S1).unlink()
    (out / S1).mkdir()
    return Case(S1, bad=SECOND, good=FIRST, local_only=True)


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def raw_png(width: int, height: int, scanlines: bytes, color: int = 0, trailer: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    idat = zlib.compress(scanlines, 9) + trailer
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _image(data: bytes) -> list[tuple[str, bytes] | tarfile.TarInfo]:
    return [(f"{key(4)}.png", data), (f"{key(4)}.json", meta(4))]


def _meta(data: bytes) -> list[tuple[str, bytes] | tarfile.TarInfo]:
    return [(f"{key(4)}.png", png(gray(40))), (f"{key(4)}.json", data)]


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def escapes(out: Path) -> Case:
    """Valid data whose text would drive a terminal: it must be read, and printed escaped."""
    producer = "evil\x1b[2J\x1b]0;owned\x07"
    members: list[tuple[str, bytes] | tarfile.TarInfo] = []
    for i in range(3):
        members += [(f"{key(i)}.png", png(gray(i))), (f"{key(i)}.json", meta(i, producer=producer))]
    shards = [tar_bytes(members)]
    publish(out, shards, producer={"name": "x\x1b[31mred"})
    return Case(None, valid=True, good=FIRST)


BOMB = b"\0" * (SIZE * (SIZE + 1))  # the 8x8 gray image's true scanlines


CASES: dict[str, tuple[str, Callable[[Path], Case]]] = {
    # tampered content, manifest intact
    "png-bit-flipped": ("tampered", _flip(_png_data_offset)),
    "json-digit-changed": ("tampered", _flip(_json_digit_offset)),
    "tar-padding-flipped": ("tampered", _flip(_padding_offset)),
    "png-crc-flipped": ("tampered", _flip(_crc_offset)),
    "shard-truncated": ("tampered", truncated),
    "shard-longer": ("tampered", longer),
    # set-level inconsistency
    "key-in-two-shards": ("set", dup_key_across_shards),
    "key-again-later-in-tar": ("set", dup_key_later_in_tar),
    "total-10^12": ("set", _total(10**12)),
    "total-0": ("set", _total(0)),
    "count-differs": ("set", count_mismatch),
    "empty-tar": ("set", empty_tar),
    "shard-count-0": ("set", zero_count_shard),
    "shard-listed-twice": ("set", listed_twice),
    # not regular files
    "shard-is-fifo": ("file", fifo),
    "shard-links-to-dev-zero": ("file", dev_zero),
    "shard-is-directory": ("file", directory_shard),
    # images that do not fit the set
    "rgba-among-gray": ("image", _refuse_sample(4, _image(png(np.zeros((SIZE, SIZE, 4), np.uint8))))),
    "rgb-among-gray": ("image", _refuse_sample(4, _image(png(np.zeros((SIZE, SIZE, 3), np.uint8))))),
    "1x1-among-8px": ("image", _refuse_sample(4, _image(png(gray(0, 1))))),
    "4096px-among-8px": ("image", _refuse_sample(4, _image(raw_png(4096, 4096, b"\0" * (4096 * 4097))))),
    "png-bomb": ("image", _refuse_sample(4, _image(raw_png(SIZE, SIZE, BOMB + b"\0" * 50_000_000)))),
    "png-short-data": ("image", _refuse_sample(4, _image(raw_png(SIZE, SIZE, BOMB[:-3])))),
    "png-data-after-stream": ("image", _refuse_sample(4, _image(raw_png(SIZE, SIZE, BOMB, trailer=b"junk")))),
    "png-100000px-header": ("image", _refuse_sample(4, _image(raw_png(100_000, 100_000, b"")))),
    "not-a-png": ("image", _refuse_sample(4, _image(b"GIF89a" + b"\0" * 40))),
    # metadata that is not what the format says
    "meta-empty-object": ("meta", _refuse_sample(4, _meta(b"{}"))),
    "meta-no-producer": ("meta", _refuse_sample(4, _meta(b'{"kind": "hard"}'))),
    "meta-duplicate-key": (
        "meta",
        _refuse_sample(4, _meta(b'{"kind": "hard", "producer": "a", "kind": "real"}')),
    ),
    "meta-1e999": ("meta", _refuse_sample(4, _meta(b'{"kind": "hard", "producer": "a", "hardness": 1e999}'))),
    "meta-NaN": ("meta", _refuse_sample(4, _meta(b'{"kind": "hard", "producer": "a", "hardness": NaN}'))),
    "meta-Infinity-nested": (
        "meta",
        _refuse_sample(4, _meta(b'{"kind": "hard", "producer": "a", "x": [Infinity]}')),
    ),
    "meta-lone-surrogate": ("meta", _refuse_sample(4, _meta(b'{"kind": "hard", "producer": "a\\ud800"}'))),
    "meta-not-utf8": ("meta", _refuse_sample(4, _meta(b'{"kind": "hard", "producer": "\xff"}'))),
    "meta-wrong-type": ("meta", _refuse_sample(4, _meta(b'{"kind": "hard", "producer": "a", "seed": "7"}'))),
    "meta-bool-as-int": (
        "meta",
        _refuse_sample(4, _meta(b'{"kind": "hard", "producer": "a", "pair_id": true}')),
    ),
    "meta-unknown-kind": ("meta", _refuse_sample(4, _meta(b'{"kind": "evil", "producer": "a"}'))),
    "meta-not-an-object": ("meta", _refuse_sample(4, _meta(b"[1, 2]"))),
    # members that must never be decoded
    "pickle-member": (
        "member",
        _refuse_sample(4, [*_image(png(gray(4))), (f"{key(4)}.pyd", b"\x80\x04K\x01.")]),
    ),
    "path-traversal": (
        "member",
        _refuse_sample(4, [("../s0004.png", png(gray(4))), (f"{key(4)}.json", meta(4))]),
    ),
    "symlink-member": (
        "member",
        _refuse_sample(
            4, [_link(f"{key(4)}.png", "/etc/passwd", tarfile.SYMTYPE), (f"{key(4)}.json", meta(4))]
        ),
    ),
    "no-json": ("member", _refuse_sample(4, [(f"{key(4)}.png", png(gray(4)))])),
    "two-images": ("member", _refuse_sample(4, [*_image(png(gray(4))), (f"{key(4)}.jpg", png(gray(4)))])),
    "cls-not-decimal": ("member", _refuse_sample(4, [*_image(png(gray(4))), (f"{key(4)}.cls", b"1e3")])),
    # valid, but hostile to a terminal
    "terminal-escapes": ("print", escapes),
}
