"""Reading a shard set's ``manifest.json``, the file whose presence means "this set is complete".

The writer publishes the manifest last, so readers trust a directory only through this module. The manifest
is also untrusted input: shard names in it are checked to be plain file names before anyone opens them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from synthkit.provenance import sha256_file as sha256_file  # re-exported for synthkit.shards
from synthkit.shards.format import FORMAT, MANIFEST, VERSION, ShardError, is_safe_name


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_structure(manifest: dict[str, Any], path: Path) -> None:
    """Raise ShardError if the shard list cannot be trusted to drive file access and counting."""
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise ShardError(f"{path}: 'shards' must be a list")
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict):
            raise ShardError(f"{path}: shards[{i}] must be an object")
        name = entry.get("name")
        if not isinstance(name, str) or not name.endswith(".tar") or not is_safe_name(name):
            raise ShardError(f"{path}: shards[{i}] has an unsafe or missing name {name!r}")
        if not _is_count(entry.get("count")) or not _is_count(entry.get("bytes")):
            raise ShardError(f"{path}: shards[{i}] ({name}) needs non-negative integer 'count' and 'bytes'")
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ShardError(f"{path}: shards[{i}] ({name}) has an invalid 'sha256' {sha!r}")
    if not _is_count(manifest.get("total")):
        raise ShardError(f"{path}: 'total' must be a non-negative integer")


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Load and check ``manifest.json`` of a shard-set directory.

    Returns None when there is no manifest: the set was never published (still being written, or its writer
    failed), which callers must treat differently from a broken manifest. Raises ShardError when the file is
    not JSON, is another format, was written by another format version, or has a malformed shard list.
    """
    path = Path(directory) / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ShardError(f"{path}: cannot read manifest: {exc}") from exc
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
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
