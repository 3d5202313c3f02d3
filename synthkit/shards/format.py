"""The synthkit shard-set format: names, constants and the per-sample metadata schema.

This module is the single place that defines the contract with users (see ``shards/README.md``), so the
writer, reader and verifier cannot drift apart. It has no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Any

from synthkit.atomic import temp_name
from synthkit.errors import ShardError, ShardSetExistsError

FORMAT = "synthkit-shards"
VERSION = 1
KINDS = ("hard", "pair_a", "pair_b", "sample", "real")
CONDITION_SOURCES = ("kmeans", "labels", "none", "model")  # model: a pretrained model's own classes
MANIFEST = "manifest.json"
SIZES = "sizes.json"

# Keys a manifest always has; manifest_fields given by a producer may not shadow them.
MANIFEST_RESERVED = ("format", "version", "name", "shards", "total", "metadata_tables")

#: Every sample's ``json`` has every one of these keys, with its type; null where it does not apply (a hard
#: sample's ``pair_id``, a cGAN sample's ``t_split``, a generated sample's ``index``). One schema for every
#: kind and producer, so a reader that infers columns from the first rows (Hugging Face ``datasets``, pandas)
#: keeps every field of every row. Producers may add keys of their own after these.
META_FIELDS: dict[str, str] = {
    "kind": "string",
    "producer": "string",
    "generator_step": "int",
    "seed": "int",
    "latent_id": "int",
    "condition": "int",
    "condition_source": "string",
    "condition_k": "int",
    "hardness": "float",
    "pair_id": "int",
    "pair_similarity": "float",
    "t_split": "float",
    "branch_mode": "string",
    "guidance_scale": "float",
    "index": "int",
    "split": "string",
}

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_INT_KEYS = ("generator_step", "seed", "latent_id", "pair_id")
_OPTIONAL_INT_KEYS = ("condition", "condition_k")
_FLOAT_KEYS = ("hardness", "pair_similarity")


__all__ = ["ShardError", "ShardSetExistsError", "temp_name"]  # re-exported: shard code names them here


def shard_name(name: str, index: int) -> str:
    """File name of shard ``index`` of set ``name``: ``NAME-%06d.tar``, a pattern webdataset brace-expands."""
    return f"{name}-{index:06d}.tar"


def is_safe_name(name: str) -> bool:
    """True for a set or shard file name that stays inside its directory and is not hidden.

    Set names become file names, and shard names in a manifest are untrusted input that drive file access.
    """
    return bool(_SAFE_NAME.fullmatch(name)) and ".." not in name


def shard_pattern(name: str) -> re.Pattern[str]:
    """Regex matching exactly the shard files of set ``name`` (not those of a set named ``name-other``)."""
    return re.compile(rf"{re.escape(name)}-\d{{6,}}\.tar")


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but True as a seed is a bug, not a seed.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    # NaN/inf would be written as bare NaN/Infinity, which is not JSON and breaks strict readers.
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def validate_meta(meta: dict) -> list[str]:
    """Return the schema problems of one sample's json metadata (empty list: valid).

    Problems are returned instead of raised so that the writer can refuse a sample with every problem at once
    and the verifier can report them without stopping. Keys other than those below are allowed so producers
    can add provenance without a format bump.

    Example:
        >>> validate_meta({"kind": "hard", "producer": "hsg", "hardness": 0.7})
        []
    """
    if not isinstance(meta, dict):
        return [f"metadata must be a JSON object (dict), got {type(meta).__name__}"]
    problems: list[str] = []
    if "kind" not in meta:
        problems.append("missing required key 'kind'")
    elif meta["kind"] not in KINDS:
        problems.append(f"'kind' must be one of {', '.join(KINDS)}; got {meta['kind']!r}")
    if "producer" not in meta:
        problems.append("missing required key 'producer'")
    elif not isinstance(meta["producer"], str) or not meta["producer"]:
        problems.append(f"'producer' must be a non-empty string; got {meta['producer']!r}")
    for key in _INT_KEYS:  # null: the field does not apply to this sample (META_FIELDS)
        if meta.get(key) is not None and not _is_int(meta[key]):
            problems.append(f"'{key}' must be an integer; got {meta[key]!r}")
    for key in _OPTIONAL_INT_KEYS:
        if key in meta and meta[key] is not None and not _is_int(meta[key]):
            problems.append(f"'{key}' must be an integer or null; got {meta[key]!r}")
    for key in _FLOAT_KEYS:
        if meta.get(key) is not None and not _is_finite_number(meta[key]):
            problems.append(f"'{key}' must be a finite number; got {meta[key]!r}")
    if meta.get("condition_source") is not None and meta["condition_source"] not in CONDITION_SOURCES:
        allowed = ", ".join(CONDITION_SOURCES)
        problems.append(f"'condition_source' must be one of {allowed}; got {meta['condition_source']!r}")
    return problems


def complete_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with every key of :data:`META_FIELDS` (null where absent), its own extra keys kept."""
    return {**dict.fromkeys(META_FIELDS), **meta}
