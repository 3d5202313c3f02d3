"""png_header: the one-IDAT layout read in a few slices, everything else walked chunk by chunk.

Each refusal of the chunk walker is named in one line; the walker and the fast check agree on what a valid
header is.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from synthkit.errors import ShardError
from synthkit.shards.decode import png_header

SIG = b"\x89PNG\r\n\x1a\n"
RAW = b"".join(b"\0" + bytes(range(4)) for _ in range(3))  # 4x3 gray, filter type 0
IDAT = zlib.compress(RAW)


def chunk(ctype: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(ctype + data) if crc is None else crc
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", crc)


def ihdr(
    width: int = 4, height: int = 3, depth: int = 8, color: int = 0, interlace: int = 0, **kw: int
) -> bytes:
    fields = (width, height, depth, color, kw.get("compression", 0), kw.get("filtering", 0), interlace)
    return chunk(b"IHDR", struct.pack(">IIBBBBB", *fields))


IEND = chunk(b"IEND", b"")


def test_plain_layout_and_walked_layout_give_the_same_header() -> None:
    plain = SIG + ihdr() + chunk(b"IDAT", IDAT) + IEND
    split = (
        SIG + ihdr() + chunk(b"tEXt", b"a\0b") + chunk(b"IDAT", IDAT[:5]) + chunk(b"IDAT", IDAT[5:]) + IEND
    )
    for data in (plain, split):
        header = png_header("w", data)
        assert (header.width, header.height, header.depth, header.color, header.interlace) == (4, 3, 8, 0, 0)
        assert header.idat == IDAT and header.fast and header.mode == "L" and header.channels == 1


def test_palette_and_ancillary_chunks_from_pillow_are_walked() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x")
    buf = io.BytesIO()
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).convert("P").save(buf, "PNG", pnginfo=info)
    header = png_header("w", buf.getvalue())
    assert (header.width, header.height, header.color, header.mode, header.channels, header.fast) == (
        4,
        3,
        3,
        "P",
        3,
        False,
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"GIF89a" + bytes(60), "not a PNG (bad signature)"),
        (SIG + ihdr() + chunk(b"IDAT", IDAT), "PNG truncated (no IEND chunk)"),
        (SIG + ihdr() + chunk(b"IDAT", IDAT)[:-6], "PNG chunk b'IDAT' runs past the end"),
        (SIG + ihdr() + chunk(b"IDAT", IDAT, crc=1) + IEND, "CRC error in PNG chunk b'IDAT'"),
        (
            SIG + chunk(b"tEXt", b"a\0b") + ihdr() + chunk(b"IDAT", IDAT) + IEND,
            "PNG does not start with IHDR",
        ),
        (SIG + ihdr() + ihdr() + chunk(b"IDAT", IDAT) + IEND, "invalid PNG IHDR chunk"),
        (SIG + chunk(b"IHDR", bytes(14)) + chunk(b"IDAT", IDAT) + IEND, "invalid PNG IHDR chunk"),
        (
            SIG + ihdr() + chunk(b"ABCD", b"x") + chunk(b"IDAT", IDAT) + IEND,
            "unknown critical PNG chunk b'ABCD'",
        ),
        (SIG + ihdr() + chunk(b"IDAT", IDAT) + IEND + b"xyz", "3 bytes after the PNG's IEND chunk"),
        (SIG + ihdr() + IEND, "PNG has no image data (IDAT)"),
    ],
)
def test_each_chunk_problem_is_named(data: bytes, problem: str) -> None:
    with pytest.raises(ShardError) as err:
        png_header("shard.tar: sample 'k' (k.png)", data)
    assert str(err.value) == f"shard.tar: sample 'k' (k.png): cannot decode image: {problem}"


def test_an_ancillary_chunk_with_a_bad_crc_is_skipped_unread() -> None:
    data = SIG + ihdr() + chunk(b"tEXt", b"a\0b", crc=1) + chunk(b"IDAT", IDAT) + IEND
    assert png_header("w", data).idat == IDAT


@pytest.mark.parametrize(
    "fields",
    [
        {"color": 1},  # no such colour type
        {"depth": 3},  # not a bit depth of gray
        {"color": 2, "depth": 4},  # RGB is 8 or 16 bits
        {"compression": 1},
        {"filtering": 1},
        {"interlace": 2},
        {"width": 0},
        {"height": 2**31},
    ],
)
def test_an_invalid_ihdr_field_is_refused_in_either_layout(fields: dict[str, int]) -> None:
    header = ihdr(**fields)
    for data in (
        SIG + header + chunk(b"IDAT", IDAT) + IEND,  # the one-IDAT layout
        SIG + header + chunk(b"tEXt", b"a\0b") + chunk(b"IDAT", IDAT) + IEND,  # walked
    ):
        with pytest.raises(ShardError, match=r"^w: cannot decode image: invalid PNG header \(\d+, "):
            png_header("w", data)
