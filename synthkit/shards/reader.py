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


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symlink to {member.linkname!r}"
    if member.islnk():
        return f"a hard link to {member.linkname!r}"
    if member.isdir():
        return "a directory"
    return "a device, fifo or other special file"


def _split_member(shard: str, member: tarfile.TarInfo, max_member_bytes: int) -> tuple[str, str]:
    """Check one member header and return (key, extension); key is the name up to the first dot."""
    name = member.name
    where = f"{shard}: member {name!r}"
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise ShardError(f"{where}: absolute member names are refused")
    if ".." in re.split(r"[/\\]", name):
        raise ShardError(f"{where}: member names with '..' are refused")
    if "/" in name or "\\" in name:
        raise ShardError(f"{where}: synthkit shards hold flat KEY.EXT members, not directories")
    if not member.isreg():
        raise ShardError(f"{where}: is {_member_kind(member)}; only regular files are allowed")
    key, dot, ext = name.partition(".")
    if not key or not dot:
        raise ShardError(f"{where}: member names must be KEY.EXT with a non-empty key")
    if ext not in DECODED_EXTENSIONS:
        raise ShardError(
            f"{where}: extension {ext!r} is not decoded by synthkit (only {', '.join(DECODED_EXTENSIONS)}); "
            "pickled or other executable content is refused"
        )
    if member.size > max_member_bytes:
        raise ShardError(f"{where}: {member.size} bytes is above the limit of {max_member_bytes}")
    return key, ext


def _to_array(im: Image.Image, where: str) -> np.ndarray:
    if im.mode in _GRAY_MODES:
        return np.array(im.convert("L"), dtype=np.uint8)[:, :, None]
    if im.mode in _COLOR_MODES:
        return np.array(im.convert("RGB"), dtype=np.uint8)
    raise ShardError(f"{where}: image mode {im.mode!r} is not supported (8-bit gray or colour only)")


def _decode_image(where: str, ext: str, data: bytes, max_pixels: int) -> np.ndarray:
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


def _check_end_marker(shard: str, raw: io.BufferedReader, offset: int, last_key: str | None) -> None:
    """Tell a complete tar from one cut at a member boundary, which tarfile silently reads as shorter."""
    raw.seek(offset)
    if raw.read(tarfile.BLOCKSIZE) != _END_BLOCK:
        after = f" after sample {last_key!r}" if last_key else ""
        raise ShardError(f"{shard}: truncated tar: no end-of-archive marker{after}")


def iter_shard_members(
    path: str | os.PathLike[str], *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream one tar shard as (key, {extension: bytes}), grouping consecutive members as webdataset does.

    Only the tar structure and member names are checked here; decoding is separate so that the verifier can
    report every undecodable sample instead of stopping at the first.
    """
    shard = str(path)
    key: str | None = None
    parts: dict[str, bytes] = {}
    seen: set[str] = set()
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed in the finally below, across yields
    except OSError as exc:
        raise ShardError(f"{shard}: cannot open shard: {exc.strerror or exc}") from exc
    try:
        tar = tarfile.open(fileobj=raw, mode="r|", encoding="utf-8")  # noqa: SIM115 - holds no resource
        while (member := tar.next()) is not None:
            tar.members.clear()  # streaming needs no index; keeping one grows with the shard
            member_key, ext = _split_member(shard, member, max_member_bytes)
            if member_key != key:
                if key is not None:
                    yield key, parts
                if member_key in seen:
                    raise ShardError(f"{shard}: sample {member_key!r} appears twice (non-adjacent members)")
                seen.add(member_key)
                key, parts = member_key, {}
            if ext in parts:
                raise ShardError(f"{shard}: member {member.name!r} appears twice")
            fileobj = tar.extractfile(member)
            assert fileobj is not None  # regular files always have content
            parts[ext] = fileobj.read()
        _check_end_marker(shard, raw, tar.offset, key)
        if key is not None:
            yield key, parts
    except (tarfile.TarError, EOFError, OSError) as exc:
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
