"""The synthkit shard-set format: names, constants and the per-sample metadata schema.

This module is the single place that defines the contract with users (see ``shards/README.md``), so the
writer, reader and verifier cannot drift apart. It has no I/O.
"""

from __future__ import annotations

import json
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
MANIFEST_RESERVED = ("format", "version", "name", "shards", "total", "image_shape", "metadata_tables")

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

# Manifest field declaring the images of a set: ``[H, W, C]`` (every image has that shape) or ``"mixed"``
# (any shapes). Without it a set holds one shape and one mode, those of its first sample.
IMAGE_SHAPE = "image_shape"
MIXED = "mixed"


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


# --------------------------------------------------------------------------- per-sample metadata

_INT = (int,)
_NUMBER = (int, float)
_STR = (str,)
# Fields every kind may carry, with their JSON types; null is allowed for every one of them except the two
# required ones, so that writers can give every kind the same key set. Keys not listed are allowed (a
# producer may add provenance without a format bump) but must still be finite, duplicate-free valid JSON.
COMMON_FIELDS: dict[str, tuple[type, ...]] = {
    "generator_step": _INT,
    "seed": _INT,
    "latent_id": _INT,
    "condition": _INT,
    "condition_source": _STR,
    "condition_k": _INT,
    "hardness": _NUMBER,
    "pair_id": _INT,
    "pair_similarity": _NUMBER,
    "t_split": _NUMBER,
    "branch_mode": _STR,
    "guidance_scale": _NUMBER,
    "index": _INT,  # shards convert: position in the source split
    "split": _STR,
}
REQUIRED_FIELDS = ("kind", "producer")
# The schema per kind: the fields it may carry (all optional, nullable). ``real`` samples come from a
# source, not a generator, and need none of the generator's fields; they are allowed all the same so that
# one key set can serve every kind.
KIND_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {kind: COMMON_FIELDS for kind in KINDS}
_CHOICES = {"condition_source": CONDITION_SOURCES}
# (keys, value types) of metadata found valid, so that a set's many samples of one layout are checked by one
# dictionary lookup plus the value checks below; bounded so hostile variety cannot grow it without end.
_VALID_LAYOUTS: set[tuple[tuple[str, ...], tuple[type, ...]]] = set()
_MAX_LAYOUTS = 4096


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but True as a seed is a bug, not a seed.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_value(key: str, value: Any, allowed: tuple[type, ...], problems: list[str]) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, allowed):
        what = {_INT: "an integer", _NUMBER: "a finite number", _STR: "a string"}[allowed]
        problems.append(f"'{key}' must be {what} or null; got {value!r}")
    elif isinstance(value, float) and not math.isfinite(value):
        problems.append(f"'{key}' must be a finite number; got {value!r}")
    elif key in _CHOICES and value not in _CHOICES[key]:
        problems.append(f"'{key}' must be one of {', '.join(_CHOICES[key])}; got {value!r}")


def _finite_and_text(value: Any, path: str, problems: list[str], depth: int = 0) -> None:
    """Every number finite and every string valid Unicode, at any depth (unknown keys included)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            problems.append(f"{path} must be a finite number; got {value!r}")
    elif isinstance(value, str):
        if not _valid_text(value):
            problems.append(f"{path} is not valid text (lone UTF-16 surrogate)")
    elif isinstance(value, dict):
        for k, v in value.items():
            if not _valid_text(k):
                problems.append(f"{path}: a key is not valid text (lone UTF-16 surrogate)")
            _finite_and_text(v, f"{path}.{k}" if depth else f"'{k}'", problems, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite_and_text(v, f"{path}[{i}]", problems, depth + 1)


def _valid_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_kind(value: Any) -> bool:
    return value in KINDS


def _is_producer(value: Any) -> bool:
    return isinstance(value, str) and value != ""


# The required keys: (key, test of its value, what the value must be).
_REQUIRED_CHECKS = (
    ("kind", _is_kind, f"one of {', '.join(KINDS)}"),
    ("producer", _is_producer, "a non-empty string"),
)


def _required_problems(meta: dict) -> list[str]:
    """A problem for each required key that is missing or has a wrong value."""
    problems = []
    for key, valid, expected in _REQUIRED_CHECKS:
        if key not in meta:
            problems.append(f"missing required key '{key}'")
        elif not valid(meta[key]):
            problems.append(f"'{key}' must be {expected}; got {meta[key]!r}")
    return problems


def validate_meta(meta: dict, *, parsed: bool = False) -> list[str]:
    """Return the schema problems of one sample's json metadata (empty list: valid).

    The schema: ``kind`` (one of KINDS) and ``producer`` (a non-empty string) are required; the fields of
    ``KIND_FIELDS[kind]`` have the JSON types listed there or are null; ``condition_source`` is one of
    CONDITION_SOURCES; every number anywhere is finite and every string is valid Unicode. Problems are
    returned instead of raised so that the writer can refuse a sample with every problem at once and the
    verifier can report them without stopping. ``parsed``: the dict came from :func:`loads_strict`, which
    already refused lone surrogates, so strings need no second look.

    Example:
        >>> validate_meta({"kind": "hard", "producer": "hsg", "hardness": 0.7})
        []
    """
    if not isinstance(meta, dict):
        return [f"metadata must be a JSON object (dict), got {type(meta).__name__}"]
    kind, producer = meta.get("kind"), meta.get("producer")
    layout = (tuple(meta), tuple(map(type, meta.values())))
    if layout in _VALID_LAYOUTS and _values_ok(meta, kind, producer, parsed):
        return []  # keys and types checked before for this layout; the values are checked just now
    problems = _required_problems(meta)
    fields = KIND_FIELDS.get(kind, COMMON_FIELDS) if isinstance(kind, str) else COMMON_FIELDS
    for key, allowed in fields.items():
        if key in meta:
            _check_value(key, meta[key], allowed, problems)
    _finite_and_text(meta, "", problems)
    problems = list(dict.fromkeys(problems))  # a field can fail the type and the finiteness check alike
    if not problems and len(_VALID_LAYOUTS) < _MAX_LAYOUTS and _layout_cacheable(layout):
        _VALID_LAYOUTS.add(layout)
    return problems


def complete_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with every key of :data:`META_FIELDS` (null where absent), its own extra keys kept."""
    return {**dict.fromkeys(META_FIELDS), **meta}


_SOURCE_OR_NONE = frozenset((*CONDITION_SOURCES, None))
_SCALARS = frozenset((int, float, str, type(None)))


def _values_ok(meta: dict, kind: Any, producer: Any, parsed: bool) -> bool:
    """The value checks of a remembered layout: choices, non-empty producer, finite floats, valid text."""
    if kind not in KINDS or not producer or meta.get("condition_source") not in _SOURCE_OR_NONE:
        return False
    if parsed:  # loads_strict refused non-finite numbers and lone surrogates already
        return True
    for value in meta.values():
        if type(value) is float:
            if not math.isfinite(value):
                return False
        elif type(value) is str and not _valid_text(value):
            return False
    return True


def _layout_cacheable(layout: tuple[tuple[str, ...], tuple[type, ...]]) -> bool:
    # Lists and objects under unknown keys hold values a layout does not describe: never remembered.
    return all(t in _SCALARS for t in layout[1])


# --------------------------------------------------------------------------- strict JSON


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {dup!r}")
    return obj


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is not finite")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)
_SCAN = _DECODER.scan_once
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def loads_strict(data: bytes) -> Any:
    """Parse JSON as the format requires: UTF-8, no duplicate keys, no NaN/Infinity, finite numbers
    (``1e999`` overflows to infinity in Python and is refused), no lone UTF-16 surrogates.

    Raises ValueError (UnicodeDecodeError and json.JSONDecodeError are ValueErrors) naming the problem.
    """
    text = data.decode("utf-8")
    try:  # the C scanner straight away; JSONDecoder.decode adds two regex passes for whitespace
        value, end = _SCAN(text, 0)
    except StopIteration:
        end = -1
    if end != len(text):  # leading or trailing whitespace, or an error: the full decoder decides and names it
        value = _DECODER.decode(text)
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        problems: list[str] = []
        _finite_and_text(value, "metadata", problems)
        if problems:
            raise ValueError(problems[0])
    return value


# --------------------------------------------------------------------------- printing untrusted text

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: Any) -> str:
    """Text from a shard, safe to print to a terminal: control characters (ESC starts terminal escape
    sequences), C1 controls, bidirectional overrides and lone surrogates become ``\\xNN``/``\\uNNNN``.

    Example:
        >>> printable("ok\\x1b[2J")
        'ok\\\\x1b[2J'
    """
    text = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text)
