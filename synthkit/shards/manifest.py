"""Reading a shard set's ``manifest.json``, the file whose presence means "this set is complete".

The writer publishes the manifest last, so readers trust a set (a directory or a URL prefix) only through
this module. The manifest is also untrusted input, checked in full before any shard is opened: shard names
must be plain file names, counts and byte sizes non-negative integers, every shard must hold at least one
sample, no shard may be listed twice, ``total`` must be the sum of the shard counts (a ``total`` of 10^12
over a few real samples would otherwise make a consumer wait for samples that never come), and an
``image_shape`` declaration must be well formed.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from synthkit.provenance import sha256_file as sha256_file  # re-exported for synthkit.shards
from synthkit.shards import location as loc
from synthkit.shards.format import FORMAT, IMAGE_SHAPE, MANIFEST, MIXED, VERSION, ShardError, is_safe_name

# A manifest lists one entry per shard; even a million shards stay far below this.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_shard_name(name: Any) -> bool:
    return isinstance(name, str) and name.endswith(".tar") and is_safe_name(name)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def _is_image_shape(shape: Any) -> bool:
    """``None`` (undeclared), ``"mixed"``, or ``[H, W, C]`` of positive integers with C 1 or 3."""
    if shape is None or shape == MIXED:
        return True
    if not isinstance(shape, list) or len(shape) != 3:
        return False
    return all(_is_count(v) and v > 0 for v in shape) and shape[2] in (1, 3)


def _entry_problem(entry: Any, i: int, names: set[str]) -> str | None:
    """The first problem of ``shards[i]``, None if none; each check relies on the ones before it."""
    if not isinstance(entry, dict):
        return f"shards[{i}] must be an object"
    name = entry.get("name")
    if not _is_shard_name(name):
        return f"shards[{i}] has an unsafe or missing name {name!r}"
    if name in names:
        return f"shard {name} is listed more than once"
    if not (_is_count(entry.get("count")) and _is_count(entry.get("bytes"))):
        return f"shards[{i}] ({name}) needs non-negative integer 'count' and 'bytes'"
    if entry["count"] == 0:
        return f"shards[{i}] ({name}) holds no samples; an empty shard is refused"
    if not _is_sha256(entry.get("sha256")):
        return f"shards[{i}] ({name}) has an invalid 'sha256' {entry.get('sha256')!r}"
    return None


def _check_structure(manifest: dict[str, Any], path: str) -> None:
    """Raise ShardError if the shard list cannot be trusted to drive file access and counting."""
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise ShardError(f"{path}: 'shards' must be a list")
    names: set[str] = set()
    for i, entry in enumerate(shards):
        problem = _entry_problem(entry, i, names)
        if problem is not None:
            raise ShardError(f"{path}: {problem}")
        names.add(entry["name"])
    total = manifest.get("total")
    if not _is_count(total):
        raise ShardError(f"{path}: 'total' must be a non-negative integer")
    listed = sum(entry["count"] for entry in shards)
    if total != listed:
        raise ShardError(f"{path}: total {total} != sum of shard counts {listed}")
    shape = manifest.get(IMAGE_SHAPE)
    if not _is_image_shape(shape):
        raise ShardError(f"{path}: '{IMAGE_SHAPE}' must be [H, W, 1 or 3] or {MIXED!r}; got {shape!r}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Load and check ``manifest.json`` of a shard set: a local directory or a URL prefix.

    Returns None when there is no manifest: the set was never published (still being written, or its writer
    failed), which callers must treat differently from a broken manifest. Raises ShardError when the file is
    not JSON, is another format, was written by another format version, or fails the checks above.
    """
    path = loc.join(loc.as_location(directory), MANIFEST)
    data = loc.read_optional(path, MAX_MANIFEST_BYTES)
    if data is None:
        return None
    try:
        manifest = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ShardError(f"{path}: manifest is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ShardError(f"{path}: manifest must be a JSON object")
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise ShardError(
            f"{path}: format version is {manifest.get('version')!r}, this synthkit reads version {VERSION}"
        )
    _check_structure(manifest, path)
    return manifest


def manifest_of(
    name: str, fields: dict[str, Any], shards: list[dict[str, Any]], shapes: set[tuple[int, int, int]]
) -> dict[str, Any]:
    """The manifest of a set: the one definition, for a writer's ``close`` and for parts published together
    (``shards/parts.py``), so a set written in parts has the bytes of one written by one writer.

    ``shapes`` are the (H, W, C) of its images: readers hold a set to one image size unless it declares
    several (``image_shape``).
    """
    manifest = {
        **fields,
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "shards": shards,
        "total": sum(s["count"] for s in shards),
    }
    if shapes:
        manifest[IMAGE_SHAPE] = list(next(iter(shapes))) if len(shapes) == 1 else MIXED
    return manifest
