"""A safe reader for shard sets: shard content is untrusted input and is parsed, never executed.

webdataset's default decoders unpickle ``pyd``/``pickle`` members and torch-load ``pth`` ones, so a shard from
an untrusted source can run code. This reader decodes only images, JSON and decimal labels, refuses every
other member (and anything shaped like a path-traversal or link), checks an image's declared size before
decoding it, and turns every malformed input into a ShardError that names the shard and the sample.

Example:
    >>> for sample in iter_samples("shards/hard"):  # doctest: +SKIP
    ...     sample["image"].shape, sample["meta"]["kind"], sample["cls"]
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import warnings
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from synthkit.shards.format import ShardError
from synthkit.shards.manifest import read_manifest

DEFAULT_MAX_PIXELS = 4096 * 4096
# Members are read into memory whole; a bound keeps a hostile or corrupt header from exhausting it.
DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024
# Extension -> the only PIL plugin allowed to parse it, so bytes cannot select an exotic decoder.
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
DECODED_EXTENSIONS = (*IMAGE_FORMATS, "json", "cls")
# What to do with a malformed sample or shard: stop with a ShardError, or drop it and record why.
ON_ERROR = ("raise", "skip")

_GRAY_MODES = {"1", "L", "LA", "La"}
_COLOR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
_DECIMAL = re.compile(r"-?[0-9]{1,30}")
_END_BLOCK = b"\0" * tarfile.BLOCKSIZE
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DECODED = frozenset(DECODED_EXTENSIONS)
_READ_BUFFER = 1 << 20


def _to_array(im: Image.Image, where: str) -> np.ndarray:
    if im.mode == "L":  # the common cases need no conversion, and np.array makes the one (writable) copy
        return np.array(im)[:, :, None]
    if im.mode == "RGB":
        return np.array(im)
    if im.mode in _GRAY_MODES:
        return np.array(im.convert("L"), dtype=np.uint8)[:, :, None]
    if im.mode in _COLOR_MODES:
        return np.array(im.convert("RGB"), dtype=np.uint8)
    raise ShardError(f"{where}: image mode {im.mode!r} is not supported (8-bit gray or colour only)")


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's leading IHDR chunk, or None when the bytes do not start that way."""
    if len(data) >= 24 and data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _decode_png_fast(where: str, data: bytes, max_pixels: int) -> np.ndarray | None:
    """Decode a PNG whose IHDR is within every limit without the per-image warnings guard (None: use it).

    Pillow warns about (or refuses) decompression bombs inside ``Image.open``, which is why the general path
    turns that warning into an error around every image. When the IHDR read here declares no more pixels than
    either limit, Pillow has nothing to warn about; should Pillow see another size than the IHDR (a crafted
    file), the image is handed to the guarded path instead.
    """
    size = _png_size(data)
    if size is None:
        return None
    pixels = size[0] * size[1]
    bomb = Image.MAX_IMAGE_PIXELS
    if pixels > max_pixels or (bomb is not None and pixels > bomb):
        return None
    try:
        im = Image.open(io.BytesIO(data), formats=["PNG"])
        try:
            if im.size != size:
                return None
            im.load()
            return _to_array(im, where)
        finally:
            im.close()
    except ShardError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return None  # the guarded path reports it
    except Exception as exc:  # corrupt bytes can make image plugins raise almost anything
        raise ShardError(f"{where}: cannot decode image: {type(exc).__name__}: {exc}") from exc


def _decode_image(where: str, ext: str, data: bytes, max_pixels: int) -> np.ndarray:
    if ext == "png" and (array := _decode_png_fast(where, data, max_pixels)) is not None:
        return array
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[IMAGE_FORMATS[ext]]) as im:
                width, height = im.size  # from the header: nothing is decoded yet
                if width * height > max_pixels:
                    raise ShardError(
                        f"{where}: image declares {width}x{height} = {width * height} pixels, above the "
                        f"limit of {max_pixels}; refused before decoding"
                    )
                im.load()
                return _to_array(im, where)
    except ShardError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ShardError(f"{where}: refused as a decompression bomb: {exc}") from exc
    except Exception as exc:  # corrupt bytes can make image plugins raise almost anything
        raise ShardError(f"{where}: cannot decode image: {type(exc).__name__}: {exc}") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _decode_json(where: str, data: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ShardError(f"{where}: invalid JSON metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise ShardError(f"{where}: JSON metadata must be an object, got {type(meta).__name__}")
    return meta


def _decode_cls(where: str, data: bytes) -> int:
    text = data.decode("ascii", errors="replace").strip()
    if not _DECIMAL.fullmatch(text):
        raise ShardError(f"{where}: cls must be an ASCII decimal integer, got {text[:40]!r}")
    return int(text)


def decode_sample(
    shard: str, key: str, parts: dict[str, bytes], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> dict[str, Any]:
    """Decode the members of one sample (from iter_shard_members) into the sample dict iter_samples yields."""
    where = f"{shard}: sample {key!r}"
    images = [ext for ext in parts if ext in IMAGE_FORMATS]
    if len(images) != 1:
        found = f"{len(images)} ({', '.join(images)})" if images else "none"
        raise ShardError(f"{where}: needs exactly one image member (png, jpg, jpeg or webp), found {found}")
    if "json" not in parts:
        raise ShardError(f"{where}: has no json metadata member")
    ext = images[0]
    return {
        "__key__": key,
        "__shard__": shard,
        "image": _decode_image(f"{where} ({key}.{ext})", ext, parts[ext], max_pixels),
        "meta": _decode_json(f"{where} ({key}.json)", parts["json"]),
        "cls": _decode_cls(f"{where} ({key}.cls)", parts["cls"]) if "cls" in parts else None,
    }


_BLOCK = tarfile.BLOCKSIZE
# Long-name and PAX extension members are read whole; no honest name or record set comes near this.
_MAX_EXTENSION_BYTES = 1 << 20
_REGULAR = (b"0", b"\0", b"7")  # "7" (contiguous file) is laid out exactly like a regular file
_LONG_NAME, _LONG_LINK = b"L", b"K"
_PAX = (b"x", b"X")  # per-member extended header (X: the old Solaris spelling)
_PAX_GLOBAL = b"g"
_KINDS = {b"2": "a symlink to {!r}", b"1": "a hard link to {!r}", b"5": "a directory"}
_SPECIAL = "a device, fifo or other special file"


class _TarError(Exception):
    """A structural problem in the tar stream; iter_shard_members turns it into a ShardError."""


def _nts(field: bytes) -> str:
    """A NUL-terminated name field as tarfile decodes it (UTF-8, undecodable bytes kept as surrogates)."""
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 (first byte 0x80 positive, 0xff negative)."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] == 0o377 else value
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    if text.strip(b"01234567"):
        raise _TarError(f"invalid numeric header field {field!r}")
    return int(text, 8)


def _checksum_ok(buf: bytes) -> bool:
    """tarfile's test: the stored sum is the header's byte sum (checksum field as spaces), unsigned or signed.

    adler32's low half is 1 + the byte sum modulo 65521; each slice here sums to less, so it is exact.
    """
    stored = _number(buf[148:156])
    total = (
        (zlib.adler32(buf[:148]) & 0xFFFF)
        + (zlib.adler32(buf[156:356]) & 0xFFFF)
        + (zlib.adler32(buf[356:]) & 0xFFFF)
        - 3
        + 256  # the eight checksum bytes counted as spaces
    )
    return stored == total or stored in tarfile.calc_chksums(buf)


def _parse_pax(data: bytes, records: dict[str, str]) -> None:
    """Add the ``LENGTH KEY=VALUE\n`` records of a PAX extended header to ``records``."""
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise _TarError("invalid PAX extended header record")
        stop = pos + int(digits)
        record = data[space + 1 : stop]
        if stop > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise _TarError("invalid PAX extended header record")
        keyword, _, value = record[:-1].partition(b"=")
        records[keyword.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = stop


class _TarReader:
    """A strict streaming reader of ustar/GNU/PAX tar headers: only what synthkit's checks need, nothing else.

    Python's tarfile costs about half of the per-sample time; this reads the same archives (GNU long names,
    ustar prefixes, PAX path/size records, base-256 sizes) and refuses sparse files and malformed headers.
    """

    def __init__(self, raw: io.BufferedReader) -> None:
        self.raw = raw
        self.offset = 0  # of the next header
        self.globals: dict[str, str] = {}

    def _read(self, size: int) -> bytes:
        data = self.raw.read(size)
        if len(data) != size:
            raise _TarError("unexpected end of data")
        return data

    def _extension(self, size: int) -> bytes:
        if not 0 <= size <= _MAX_EXTENSION_BYTES:
            raise _TarError(f"extension header of {size} bytes is refused (limit {_MAX_EXTENSION_BYTES})")
        data = self._read(size)
        self._read(-size % _BLOCK)
        self.offset += _BLOCK + size + (-size % _BLOCK)
        return data

    def next(self) -> tuple[str, bytes, str, int] | None:
        """(name, typeflag, linkname, size) of the next member, positioned at its data; None at the end.

        A stream that ends where a header should be is truncated: a complete archive ends with a zero block.
        """
        overrides: list[tuple[str, str]] = []  # ("name" | "linkname" | pax keyword, value), outermost first
        first = True
        while True:
            buf = self.raw.read(_BLOCK)
            if buf == _END_BLOCK and first:
                return None
            if len(buf) != _BLOCK:
                if not first:
                    raise _TarError("an extension header is not followed by a member header")
                raise _TarError("empty file" if self.offset == 0 and not buf else "no end-of-archive marker")
            if buf == _END_BLOCK:
                raise _TarError("an extension header is not followed by a member header")
            if not _checksum_ok(buf):
                raise _TarError(f"bad header checksum at byte {self.offset}")
            typeflag = buf[156:157]
            size = _number(buf[124:136])
            if typeflag in (_LONG_NAME, _LONG_LINK):
                value = _nts(self._extension(size))
                overrides.append(("name" if typeflag == _LONG_NAME else "linkname", value))
            elif typeflag in _PAX:
                records: dict[str, str] = {}
                _parse_pax(self._extension(size), records)
                overrides.extend(records.items())
            elif typeflag == _PAX_GLOBAL:
                _parse_pax(self._extension(size), self.globals)
            else:
                break
            first = False
        name = _nts(buf[:100])
        linkname = _nts(buf[157:257]) if typeflag not in _REGULAR else ""
        if typeflag == b"\0" and name.endswith("/"):  # old V7 tar: a directory is a regular file named "x/"
            typeflag = b"5"
        if typeflag == b"5":
            name = name.rstrip("/")
        if buf[345] and typeflag != b"S":  # ustar prefix, as tarfile joins it
            name = _nts(buf[345:500]) + "/" + name
        # Innermost first, as tarfile does: global PAX records, then the extensions nearest the header.
        for keyword, value in [*self.globals.items(), *reversed(overrides)]:
            if keyword in ("name", "path"):
                name = value
            elif keyword in ("linkname", "linkpath"):
                linkname = value
            elif keyword == "size":
                if not value.isdigit():
                    raise _TarError(f"invalid PAX size {value[:40]!r}")
                size = int(value)
            elif keyword.startswith("GNU.sparse."):
                typeflag = b"S"
        if typeflag == b"5":
            name = name.rstrip("/")
        if size < 0:
            raise _TarError(f"negative member size {size}")
        self.offset += _BLOCK
        return name, typeflag, linkname, size

    def data(self, size: int) -> bytes:
        """The data of the member just returned by next(), and skip its padding."""
        data = self._read(size)
        if pad := -size % _BLOCK:
            self._read(pad)
        self.offset += size + pad
        return data


def _split_member(
    shard: str, name: str, typeflag: bytes, linkname: str, size: int, max_member_bytes: int
) -> tuple[str, str]:
    """Check one member header and return (key, extension); key is the name up to the first dot."""
    where = f"{shard}: member {name!r}"
    if "/" in name or "\\" in name or name[1:2] == ":":
        if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
            raise ShardError(f"{where}: absolute member names are refused")
        if ".." in re.split(r"[/\\]", name):
            raise ShardError(f"{where}: member names with '..' are refused")
        if "/" in name or "\\" in name:
            raise ShardError(f"{where}: synthkit shards hold flat KEY.EXT members, not directories")
    elif name == "..":
        raise ShardError(f"{where}: member names with '..' are refused")
    if typeflag not in _REGULAR:
        kind = "a GNU sparse file" if typeflag == b"S" else _KINDS.get(typeflag, _SPECIAL).format(linkname)
        raise ShardError(f"{where}: is {kind}; only regular files are allowed")
    key, dot, ext = name.partition(".")
    if not key or not dot:
        raise ShardError(f"{where}: member names must be KEY.EXT with a non-empty key")
    if ext not in _DECODED:
        raise ShardError(
            f"{where}: extension {ext!r} is not decoded by synthkit (only {', '.join(DECODED_EXTENSIONS)}); "
            "pickled or other executable content is refused"
        )
    if size > max_member_bytes:
        raise ShardError(f"{where}: {size} bytes is above the limit of {max_member_bytes}")
    return key, ext


def iter_shard_members(
    path: str | os.PathLike[str], *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream one tar shard as (key, {extension: bytes}), grouping consecutive members as webdataset does.

    Only the tar structure and member names are checked here; decoding is separate so that the verifier can
    report every undecodable sample instead of stopping at the first. A shard must end with the tar
    end-of-archive block: one cut between two members is reported as truncated, not read as shorter.
    """
    shard = str(path)
    key: str | None = None
    parts: dict[str, bytes] = {}
    seen: set[str] = set()
    try:
        raw = open(path, "rb", buffering=_READ_BUFFER)  # noqa: SIM115 - closed in the finally below, across yields
    except OSError as exc:
        raise ShardError(f"{shard}: cannot open shard: {exc.strerror or exc}") from exc
    try:
        tar = _TarReader(raw)
        while (member := tar.next()) is not None:
            name, typeflag, linkname, size = member
            member_key, ext = _split_member(shard, name, typeflag, linkname, size, max_member_bytes)
            if member_key != key:
                if key is not None:
                    yield key, parts
                if member_key in seen:
                    raise ShardError(f"{shard}: sample {member_key!r} appears twice (non-adjacent members)")
                seen.add(member_key)
                key, parts = member_key, {}
            if ext in parts:
                raise ShardError(f"{shard}: member {name!r} appears twice")
            parts[ext] = tar.data(size)
        if key is not None:
            yield key, parts
    except (_TarError, OSError) as exc:
        after = f" after sample {key!r}" if key else ""
        raise ShardError(f"{shard}: corrupt or truncated tar{after}: {exc}") from exc
    finally:
        raw.close()


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")


def _record(errors: list[tuple[str, str]] | None, where: str, reason: str) -> None:
    """Report one skipped item; without a collector a skip must still be visible, so it warns."""
    if errors is None:
        warnings.warn(f"skipped (on_error='skip'): {reason}", stacklevel=3)  # reason names the shard
    else:
        errors.append((where, reason))


def _forward(found: list[tuple[str, str]], done: int, errors: list[tuple[str, str]] | None) -> int:
    """Record the skips in ``found`` after the first ``done``; return how many are recorded now."""
    for where, reason in found[done:]:
        _record(errors, where, reason)
    return len(found)


def _iter_shard_skipping(
    path: str | os.PathLike[str], max_pixels: int, max_member_bytes: int, errors: list[tuple[str, str]] | None
) -> Iterator[dict[str, Any]]:
    """iter_shard with on_error="skip": a bad sample is dropped, a bad tar ends its shard early.

    A tar-level error (truncation, a refused member, a broken header) leaves the stream at an unknown
    position, so the rest of that shard cannot be trusted and is dropped; samples completed before it
    were read whole and are yielded.
    """
    shard = str(path)
    members = iter_shard_members(path, max_member_bytes=max_member_bytes)
    while True:
        try:
            key, parts = next(members)
        except StopIteration:
            return
        except ShardError as exc:
            _record(errors, shard, str(exc))
            return
        try:
            sample = decode_sample(shard, key, parts, max_pixels=max_pixels)
        except ShardError as exc:
            _record(errors, f"{shard}:{key}", str(exc))
            continue
        yield sample


def iter_shard(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    on_error: str = "raise",
    errors: list[tuple[str, str]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream the decoded samples of one tar shard; see iter_samples (also for ``on_error``/``errors``)."""
    _check_on_error(on_error)
    if on_error == "skip":
        yield from _iter_shard_skipping(path, max_pixels, max_member_bytes, errors)
        return
    shard = str(path)
    for key, parts in iter_shard_members(path, max_member_bytes=max_member_bytes):
        yield decode_sample(shard, key, parts, max_pixels=max_pixels)


def _resolve(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[tuple[Path, int | None]]:
    """Shard paths in order, each with the sample count its manifest promises (None for bare tar paths)."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    shards: list[tuple[Path, int | None]] = []
    for item in items:
        path = Path(item)
        if not path.is_dir():
            shards.append((path, None))
            continue
        manifest = read_manifest(path)
        if manifest is None:
            raise ShardError(
                f"{path}: no manifest.json, so this is not a published shard set (still being written, or "
                "its writer failed)"
            )
        shards.extend((path / entry["name"], entry["count"]) for entry in manifest["shards"])
    return shards


def iter_samples(
    dir_or_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    on_error: str = "raise",
    errors: list[tuple[str, str]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield every sample of a shard set directory (shards in manifest order) or of the given tar paths.

    Each sample is ``{"__key__", "__shard__", "image", "meta", "cls"}`` with ``image`` a uint8 HxWxC array
    (C=1 for grayscale, 3 for colour) and ``cls`` an int or None. By default raises ShardError on anything
    malformed, including a shard holding fewer or more samples than its manifest says.

    Long training runs may prefer to lose a few samples over stopping: with ``on_error="skip"`` an
    undecodable sample is dropped and recorded as ``("SHARD:KEY", reason)``, and a shard whose tar is
    broken (truncated, a refused member such as a pickle, a count that differs from the manifest) is
    recorded as ``("SHARD", reason)`` and read no further. Nothing malformed is ever yielded, and nothing
    is unpickled in either mode. A set directory without a manifest still raises: that is a wrong path or an
    unpublished set, not damaged data.

    Args:
        dir_or_paths: a set directory (its manifest is required), a tar path, or an iterable of either.
        max_pixels: images declaring more pixels are refused before decoding.
        max_member_bytes: larger tar members are refused before being read.
        on_error: ``"raise"`` (default) or ``"skip"``.
        errors: with ``on_error="skip"``, skipped items are appended here as ``(where, reason)``; without a
            list, each skip is a warning.
    """
    _check_on_error(on_error)
    for path, expected in _resolve(dir_or_paths):
        count = 0
        if on_error == "skip":
            # Forward each skip as soon as it happens: a consumer may stop in the middle of a shard.
            found: list[tuple[str, str]] = []
            done = 0
            for sample in iter_shard(
                path, max_pixels=max_pixels, max_member_bytes=max_member_bytes, on_error="skip", errors=found
            ):
                done = _forward(found, done, errors)
                count += 1
                yield sample
            broken = any(where == str(path) for where, _ in found)
            count += sum(where != str(path) for where, _ in found)  # undecodable samples still count
            if expected is not None and count != expected and not broken:
                found.append((str(path), f"{path}: holds {count} samples, the manifest says {expected}"))
            _forward(found, done, errors)
            continue
        for sample in iter_shard(path, max_pixels=max_pixels, max_member_bytes=max_member_bytes):
            count += 1
            yield sample
        if expected is not None and count != expected:
            raise ShardError(f"{path}: holds {count} samples, the manifest says {expected}")
