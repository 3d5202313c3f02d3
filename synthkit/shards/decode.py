"""Decoding the members of a sample: images within their declared size, strict JSON, decimal labels.

PNG images are checked before any pixel is decoded: the chunk layout, the CRCs of the header and data
chunks, and the exact size of the decompressed image data, which a valid PNG fixes from its header
(height rows of ``1 + ceil(width * bits per pixel / 8)`` bytes). A PNG whose data inflates to more than that
(a decompression bomb: kilobytes that inflate to gigabytes) is refused as soon as inflating passes that size,
so it costs no more than a valid image of its declared size. libpng, which ``torchvision.io.decode_png``
uses, inflates all of it and only warns; Pillow stops early but accepts it.

The common case, 8-bit gray or RGB without interlacing (everything synthkit writes), is then unfiltered by
Pillow's PNG row decoder from the already inflated data (re-wrapped as a stored deflate stream, which costs
a copy, not a second inflate), straight into one array for all images of a shard that share a size. That is
one inflate per image, as in any decoder, and no per-image Python objects besides the row decoder. Other
PNGs (palette, alpha, 16-bit, interlaced) and JPEG/WEBP go through ``PIL.Image.open`` with its
decompression-bomb guard turned into an error.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np
from PIL import Image

from synthkit.errors import ShardError
from synthkit.shards.format import loads_strict
from synthkit.shards.tar import IMAGE_FORMATS

DEFAULT_MAX_PIXELS = 4096 * 4096
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GRAY_MODES = {"1", "L", "LA", "La"}
_COLOR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
_DECIMAL = re.compile(r"-?[0-9]{1,30}")
# PNG colour type -> (mode name, samples per pixel); bit depths allowed per type (PNG spec, table 11.1).
_PNG_TYPES = {0: ("L", 1), 2: ("RGB", 3), 3: ("P", 1), 4: ("LA", 2), 6: ("RGBA", 4)}
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_IHDR = struct.Struct(">IIBBBBB")
_CRC_AND_LENGTH = struct.Struct(">II")
# Adam7 passes: (x start, y start, x step, y step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
# Pillow's PNG row decoder (what Image.open and Image.frombytes(..., "zip") run), called directly so that a
# batch of images costs one decoder object each and no Image objects.
_zip_decoder = Image.core.zip_decoder
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_SIGNATURE_IHDR = PNG_SIGNATURE + b"\x00\x00\x00\rIHDR"
_RAW_SIZES: dict[tuple[int, int, int, int, int], int] = {}


class PngHeader:
    """What a PNG's chunks declare, and its compressed image data (all IDAT chunks joined)."""

    __slots__ = ("width", "height", "depth", "color", "interlace", "idat", "mode", "channels", "fast")

    def __init__(self, width: int, height: int, depth: int, color: int, interlace: int, idat: bytes) -> None:
        self.width, self.height, self.depth, self.color, self.interlace = (
            width,
            height,
            depth,
            color,
            interlace,
        )
        self.idat = idat
        self.mode = _PNG_TYPES[color][0] + ("" if depth == 8 else f";{depth}")
        self.channels = 3 if color in (2, 3, 6) else 1  # what the reader gives out: gray or RGB
        self.fast = depth == 8 and color in (0, 2) and interlace == 0  # 8-bit gray or RGB: the batch path

    def raw_size(self) -> int:
        """Bytes of filtered scanlines the header implies: the exact size the image data must inflate to."""
        layout = (self.width, self.height, self.depth, self.color, self.interlace)
        size = _RAW_SIZES.get(layout)
        if size is None:
            size = self._raw_size()
            if len(_RAW_SIZES) < 4096:
                _RAW_SIZES[layout] = size
        return size

    def _raw_size(self) -> int:
        bits = _PNG_TYPES[self.color][1] * self.depth
        passes = _ADAM7 if self.interlace else ((0, 0, 1, 1),)
        total = 0
        for x0, y0, dx, dy in passes:
            w = (self.width - x0 + dx - 1) // dx if self.width > x0 else 0
            h = (self.height - y0 + dy - 1) // dy if self.height > y0 else 0
            if w and h:
                total += h * (1 + (w * bits + 7) // 8)
        return total


def png_header(where: str, data: bytes) -> PngHeader:
    """Parse and check a PNG's chunk layout (signature, IHDR first, CRCs, IEND last, nothing after)."""
    if _one_idat_layout(data):
        width, height, depth, color, compression, filtering, interlace = _IHDR.unpack_from(data, 16)
        if _ihdr_ok(width, height, depth, color, compression, filtering, interlace):
            return PngHeader(width, height, depth, color, interlace, data[41 : len(data) - 16])
    # Anything else (ancillary chunks, several IDATs, a palette, or something wrong that must be named).
    return _ChunkWalker(where, data).header()


def _one_idat_layout(data: bytes) -> bool:
    """The layout every PNG encoder writes for a small image, checked in a few slices: signature, IHDR,
    one IDAT, IEND, nothing after; the CRCs of IHDR and IDAT verified as :class:`_ChunkWalker` does."""
    n = len(data)
    if n < 57 or data[:16] != _SIGNATURE_IHDR:
        return False
    ihdr_crc, idat_length = _CRC_AND_LENGTH.unpack_from(data, 29)  # IHDR's CRC, then IDAT's length
    return (
        idat_length == n - 57
        and data[37:41] == b"IDAT"
        and data[n - 12 :] == _IEND
        and zlib.crc32(data[12:29]) == ihdr_crc
        and zlib.crc32(data[37 : n - 16]) == int.from_bytes(data[n - 16 : n - 12], "big")
    )


def _ihdr_ok(
    width: int, height: int, depth: int, color: int, compression: int, filtering: int, interlace: int
) -> bool:
    """IHDR fields the PNG spec allows (section 11.2.2): a colour type with one of its bit depths, compression
    and filter method 0, no interlacing or Adam7, and a width and height in 1 .. 2**31 - 1."""
    return (
        color in _PNG_TYPES
        and depth in _PNG_DEPTHS[color]
        and compression == filtering == 0
        and interlace in (0, 1)
        and 0 < width < 2**31
        and 0 < height < 2**31
    )


class _ChunkWalker:
    """A PNG's chunks walked in order, one method per critical chunk kind, each refusal named.

    Every chunk is framed (its length inside the data) and, when critical, its CRC checked; the first must
    be IHDR; ancillary chunks are skipped unread, as by every decoder that ignores them; PLTE is skipped
    (Pillow reads it); any other critical chunk is refused; IEND must be last, with nothing after it.
    """

    def __init__(self, where: str, data: bytes) -> None:
        self.where = where
        self.data = data
        self.fields: tuple[int, ...] | None = None  # the IHDR fields once read
        self.idat: list[bytes] = []

    def _fail(self, problem: str) -> NoReturn:
        raise ShardError(f"{self.where}: cannot decode image: {problem}")

    def header(self) -> PngHeader:
        """Walk every chunk up to IEND, then check what IHDR declares."""
        if self.data[:8] != PNG_SIGNATURE:
            self._fail("not a PNG (bad signature)")
        pos, done = 8, False
        while not done:
            ctype, start, stop = self._chunk(pos)
            if self.fields is None and ctype != b"IHDR":
                self._fail("PNG does not start with IHDR")
            done = self._handler(ctype)(self, start, stop)
            pos = stop + 4  # past the CRC
        if not _ihdr_ok(*self.fields):  # type: ignore[misc]  # IHDR came first, so fields are set
            self._fail(f"invalid PNG header {self.fields}")
        if not self.idat:
            self._fail("PNG has no image data (IDAT)")
        width, height, depth, color, _, _, interlace = self.fields  # type: ignore[misc]
        return PngHeader(width, height, depth, color, interlace, b"".join(self.idat))

    def _chunk(self, pos: int) -> tuple[bytes, int, int]:
        """(type, start, stop) of the data of the chunk at ``pos``: framed within the PNG, CRC checked."""
        data, n = self.data, len(self.data)
        if pos + 12 > n:
            self._fail("PNG truncated (no IEND chunk)")
        length = int.from_bytes(data[pos : pos + 4], "big")
        ctype = data[pos + 4 : pos + 8]
        stop = pos + 8 + length
        if length > 0x7FFFFFFF or stop + 4 > n:
            self._fail(f"PNG chunk {ctype!r} runs past the end")
        crc = int.from_bytes(data[stop : stop + 4], "big")
        if _critical(ctype) and zlib.crc32(data[pos + 4 : stop]) != crc:
            self._fail(f"CRC error in PNG chunk {ctype!r}")
        return ctype, pos + 8, stop

    def _handler(self, ctype: bytes) -> Callable[[_ChunkWalker, int, int], bool]:
        handler = _CHUNK_HANDLERS.get(ctype)
        if handler is not None:
            return handler
        if _critical(ctype):
            self._fail(f"unknown critical PNG chunk {ctype!r}")
        return _ChunkWalker._skip

    # Handlers: the chunk's data is data[start:stop]; each returns True at the last chunk.

    def _ihdr(self, start: int, stop: int) -> bool:
        if self.fields is not None or stop - start != 13:
            self._fail("invalid PNG IHDR chunk")
        self.fields = _IHDR.unpack_from(self.data, start)
        return False

    def _idat(self, start: int, stop: int) -> bool:
        self.idat.append(self.data[start:stop])
        return False

    def _iend(self, start: int, stop: int) -> bool:
        after = len(self.data) - (stop + 4)
        if after:
            self._fail(f"{after} bytes after the PNG's IEND chunk")
        return True

    def _skip(self, start: int, stop: int) -> bool:
        return False


def _critical(ctype: bytes) -> bool:
    """A critical chunk (first letter upper case): a decoder must understand it, and its CRC is checked."""
    return ctype[:1].isupper()


_CHUNK_HANDLERS = {
    b"IHDR": _ChunkWalker._ihdr,
    b"IDAT": _ChunkWalker._idat,
    b"IEND": _ChunkWalker._iend,
    b"PLTE": _ChunkWalker._skip,
}


def check_pixels(where: str, width: int, height: int, max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` (or Pillow's MAX_IMAGE_PIXELS)."""
    bomb = Image.MAX_IMAGE_PIXELS
    if bomb is not None and width * height > bomb:
        raise ShardError(
            f"{where}: refused as a decompression bomb: {width}x{height} = {width * height} pixels is above "
            f"Pillow's MAX_IMAGE_PIXELS ({bomb})"
        )
    if width * height > max_pixels:
        raise ShardError(
            f"{where}: image declares {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels}; refused before decoding"
        )


def inflate_exact(where: str, header: PngHeader) -> bytes:
    """The image data inflated, refused unless it is exactly the size the header implies.

    Inflating stops one byte past that size, so a bomb costs what a valid image of its declared size costs.
    """
    expected = header.raw_size()
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(header.idat, expected + 1)
    except zlib.error as exc:
        raise ShardError(f"{where}: cannot decode image: corrupt PNG image data ({exc})") from exc
    if len(raw) > expected or (len(raw) == expected and not inflater.eof and inflater.unconsumed_tail):
        raise ShardError(
            f"{where}: PNG image data inflates beyond the {expected} bytes its "
            f"{header.width}x{header.height} header declares; refused as a decompression bomb"
        )
    if len(raw) < expected or not inflater.eof:
        raise ShardError(f"{where}: cannot decode image: PNG image data ends early (truncated or corrupt)")
    if inflater.unused_data:
        raise ShardError(f"{where}: cannot decode image: data after the end of the PNG's compressed stream")
    return raw


def decode_png_batch(where: list[str], headers: list[PngHeader], raws: list[bytes]) -> np.ndarray:
    """N fast-path PNGs of one size and mode, inflated by inflate_exact, as uint8 N x H x W x C.

    Pillow's PNG row decoder (the one ``Image.open`` runs) unfilters all of them in one call: their
    scanlines are laid one image after another, each image preceded by a row of zeros (filter type 0), and
    fed as one stored (uncompressed) deflate stream, so nothing is inflated twice. The zero row is what a
    PNG's first row is unfiltered against (PNG spec, section 9.2: the prior row of the first scanline is
    all zeros), so every image decodes exactly as it would alone; the zero rows are dropped afterwards.
    """
    first = headers[0]
    mode, channels = _PNG_TYPES[first.color]
    w, h = first.width, first.height
    zero_row = bytes(1 + w * channels)
    canvas = Image.new(mode, (w, (h + 1) * len(headers)))
    decoder = _zip_decoder(mode, mode)
    decoder.setimage(canvas.im, (0, 0, *canvas.size))
    consumed, error = decoder.decode(_stored(zero_row + zero_row.join(raws)))
    if consumed >= 0 or error != 0:  # a filter type outside 0-4 in one of them: the caller finds which
        raise ShardError(f"{where[0]}: cannot decode image: invalid PNG scanlines (error {error})")
    out = np.array(canvas).reshape(len(headers), h + 1, w, channels)  # a copy: samples are writable
    return out[:, 1:]


def _stored(raw: bytes) -> bytes:
    """``raw`` as a zlib stream of stored (uncompressed) deflate blocks, as ``zlib.compress(raw, 0)`` makes
    it, without the cost of setting up a compressor (RFC 1950 header and Adler-32, RFC 1951 section 3.2.4)."""
    parts = [b"\x78\x01"] if raw else [b"\x78\x01\x01\x00\x00\xff\xff"]
    for start in range(0, len(raw), 0xFFFF):
        block = raw[start : start + 0xFFFF]
        final = 1 if start + 0xFFFF >= len(raw) else 0
        parts.append(struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF))
        parts.append(block)
    parts.append(zlib.adler32(raw).to_bytes(4, "big"))
    return b"".join(parts)


def _to_array(im: Image.Image, where: str) -> np.ndarray:
    if im.mode == "L":
        return np.array(im)[:, :, None]
    if im.mode == "RGB":
        return np.array(im)
    if im.mode in _GRAY_MODES:
        return np.array(im.convert("L"), dtype=np.uint8)[:, :, None]
    if im.mode in _COLOR_MODES:
        return np.array(im.convert("RGB"), dtype=np.uint8)
    raise ShardError(f"{where}: image mode {im.mode!r} is not supported (8-bit gray or colour only)")


def decode_image_pil(where: str, ext: str, data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """Any accepted image through ``PIL.Image.open`` (one plugin per extension); (pixels, source mode)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[IMAGE_FORMATS[ext]]) as im:
                width, height = im.size  # from the header: nothing is decoded yet
                check_pixels(where, width, height, max_pixels)
                mode = im.mode
                im.load()
                if im.size != (width, height):
                    raise ShardError(f"{where}: cannot decode image: decoded size differs from its header")
                return _to_array(im, where), mode
    except ShardError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ShardError(f"{where}: refused as a decompression bomb: {exc}") from exc
    except Exception as exc:  # corrupt bytes can make image plugins raise almost anything
        raise ShardError(f"{where}: cannot decode image: {type(exc).__name__}: {exc}") from exc


def decode_image(where: str, ext: str, data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """One image, every check applied; (uint8 H x W x C array, source mode such as ``"L"``)."""
    if ext != "png":
        return decode_image_pil(where, ext, data, max_pixels)
    header = png_header(where, data)
    check_pixels(where, header.width, header.height, max_pixels)
    raw = inflate_exact(where, header)
    if header.fast:
        return decode_png_batch([where], [header], [raw])[0], header.mode
    return decode_image_pil(where, ext, data, max_pixels)[0], header.mode


def decode_json(where: str, data: bytes) -> dict[str, Any]:
    """A sample's metadata by the format's JSON rules (:func:`synthkit.shards.format.loads_strict`)."""
    try:
        meta = loads_strict(data)
    except (ValueError, RecursionError) as exc:
        raise ShardError(f"{where}: invalid JSON metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise ShardError(f"{where}: JSON metadata must be an object, got {type(meta).__name__}")
    return meta


def decode_cls(where: str, data: bytes) -> int:
    text = data.decode("ascii", errors="replace").strip()
    if not _DECIMAL.fullmatch(text):
        raise ShardError(f"{where}: cls must be an ASCII decimal integer, got {text[:40]!r}")
    return int(text)
