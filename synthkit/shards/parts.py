"""A shard set written in parts (processes of one launch, or the jobs of an array), published as one set.

Each part is a contiguous run of whole shards (``layout.Part``), written by a ``ShardSetWriter(part=...)``
into the same directory with its own journal, ``.NAME.part-IIIII-of-NNNNN.journal.json``: the journal
format of a resumable writer plus the part's place, the manifest fields and, once the part is closed,
``"complete": true``. Nothing a part writes claims the set is complete; :func:`publish_parts` does, after it
has checked every part:

* the journals of one set (one name, one part count, the same manifest fields and ``maxcount``), every
  part present and complete;
* their shards, in part order, are shards 0, 1, ... with no gap or overlap, every one full but the last;
* every shard file has its journal's size and SHA-256 (read in full: the copy being published is the one
  checked).

Only then does it publish ``sizes.json`` and ``manifest.json`` (``manifest.manifest_of``, with the image
shapes every part recorded: the same bytes one writer's ``close`` writes) and remove the part journals. A
problem raises ShardError listing every problem found, and nothing is published.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthkit.atomic import fsync_dir, write_json_atomic
from synthkit.errors import OutputError
from synthkit.shards.format import (
    MANIFEST,
    MANIFEST_RESERVED,
    SIZES,
    ShardError,
    ShardSetExistsError,
    shard_name,
)
from synthkit.shards.journal import ENTRY_KEYS, JOURNAL_FORMAT, JOURNAL_VERSION, fields_digest, shard_matches
from synthkit.shards.manifest import manifest_of, read_manifest
from synthkit.shards.tables import publish_tables, table_format

__all__ = ["find_part_journals", "publish_parts"]

_PART_JOURNAL = re.compile(
    r"\.(?P<name>[A-Za-z0-9_][A-Za-z0-9_.\-]*)\.part-(?P<i>\d{5})-of-(?P<n>\d{5})\.journal\.json"
)


def find_part_journals(out_dir: Path, name: str | None = None) -> dict[str, list[tuple[int, int, Path]]]:
    """The part journals in ``out_dir`` by set name (only ``name``'s, if given): (index, count, path)."""
    found: dict[str, list[tuple[int, int, Path]]] = {}
    if not out_dir.is_dir():
        return found
    for path in sorted(out_dir.iterdir()):
        m = _PART_JOURNAL.fullmatch(path.name)
        if m and (name is None or m["name"] == name):
            found.setdefault(m["name"], []).append((int(m["i"]), int(m["n"]), path))
    return found


# A part journal's header: (key, the value it must have) and (key, the type its value must have).
_PART_JOURNAL_VALUES = (("format", JOURNAL_FORMAT), ("version", JOURNAL_VERSION))
_PART_JOURNAL_TYPES = (("part", dict), ("fields", dict), ("shards", list))


def _is_part_journal(journal: Any) -> bool:
    """The header of a part journal of this format and version, its shard entries objects (each entry's
    fields are checked where the shards are joined)."""
    if not isinstance(journal, dict):
        return False
    if any(journal.get(key) != value for key, value in _PART_JOURNAL_VALUES):
        return False
    if any(not isinstance(journal.get(key), kind) for key, kind in _PART_JOURNAL_TYPES):
        return False
    return all(isinstance(e, dict) for e in journal["shards"])


def _load(path: Path) -> dict[str, Any]:
    try:
        journal = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ShardError(f"{path}: cannot read the part journal: {exc}") from exc
    if not _is_part_journal(journal):
        raise ShardError(f"{path}: not a {JOURNAL_FORMAT} version {JOURNAL_VERSION} part journal")
    if fields_digest(journal["fields"]) != journal.get("fields_sha256"):
        raise ShardError(f"{path}: its manifest fields do not match their recorded digest")
    return journal


def _already_published(out_dir: Path, name: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    manifest = read_manifest(out_dir)
    if manifest is None:
        return None
    theirs = {k: v for k, v in manifest.items() if k not in MANIFEST_RESERVED}
    if manifest.get("name") != name or fields_digest(theirs) != fields_digest(fields):
        raise ShardSetExistsError(f"{out_dir} already holds a different published shard set ({MANIFEST})")
    return manifest


def publish_parts(
    out_dir: str | Path,
    name: str | None = None,
    *,
    before_publish: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None,
) -> dict[str, Any]:
    """Check the parts of the set in ``out_dir`` (see the module) and publish them as one set.

    ``name`` is needed only when the directory holds the parts of several sets. ``before_publish(fields,
    shards)`` runs after the checks and before the manifest (the export writes its preview there). A set
    that is published already is returned as it is (with the journals a kill after its manifest left behind
    removed, when they are of the same request). Returns the manifest.
    """
    out_dir = Path(out_dir)
    found = find_part_journals(out_dir, name)
    if not found:
        return _published_without_journals(out_dir, name)
    name, entries, count = _one_split(out_dir, found)
    journals = {i: _load(path) for i, _, path in entries}
    missing = [i for i in range(count) if i not in journals]
    problems = [f"part(s) {', '.join(map(str, missing))} of {count} never started"] if missing else []
    maxcount = _one_request(out_dir, name, journals)
    fields = next(iter(journals.values()))["fields"]
    done = _already_published(out_dir, name, fields)
    if done is not None:
        _remove([p for _, _, p in entries], out_dir)
        return done
    shards = _joined_shards(journals, count, problems, check_starts=not missing)
    _refuse(out_dir, name, problems)
    _refuse(out_dir, name, _shard_problems(out_dir, name, shards, maxcount))
    shapes = {tuple(shape) for j in journals.values() for shape in j.get("image_shapes", [])}
    if before_publish is not None:
        before_publish(fields, shards)
    manifest = _publish(out_dir, manifest_of(name, fields, shards, shapes), shards)
    _remove([p for _, _, p in entries], out_dir)
    return manifest


def _published_without_journals(out_dir: Path, name: str | None) -> dict[str, Any]:
    """The manifest of a set published already (its journals gone); ShardError where there is none."""
    manifest = read_manifest(out_dir) if out_dir.is_dir() else None
    if manifest is not None and name in (None, manifest.get("name")):
        return manifest
    raise ShardError(f"{out_dir} holds no parts of a shard set (no .NAME.part-*.journal.json)")


def _one_split(
    out_dir: Path, found: dict[str, list[tuple[int, int, Path]]]
) -> tuple[str, list[tuple[int, int, Path]], int]:
    """The one set of ``found`` and its part count: parts of several sets, or one set split in different
    ways, are refused."""
    if len(found) > 1:
        raise ShardError(f"{out_dir} holds the parts of several sets ({', '.join(sorted(found))}); name one")
    ((name, entries),) = found.items()
    counts = {n for _, n, _ in entries}
    if len(counts) > 1:
        raise ShardError(
            f"{out_dir} holds parts of {name!r} split in different ways (into {sorted(counts)} parts): "
            "an interrupted export must be finished with the split it started with"
        )
    return name, entries, counts.pop()


def _one_request(out_dir: Path, name: str, journals: dict[int, dict[str, Any]]) -> Any:
    """The parts' common ``maxcount``; parts started by different requests are refused."""
    digests = {j["fields_sha256"] for j in journals.values()}
    maxcounts = {j.get("maxcount") for j in journals.values()}
    if len(digests) > 1 or len(maxcounts) > 1:
        raise ShardError(f"{out_dir}: the parts of {name!r} were started by different requests; delete it")
    return maxcounts.pop()


def _joined_shards(
    journals: dict[int, dict[str, Any]], count: int, problems: list[str], *, check_starts: bool
) -> list[dict[str, Any]]:
    """The parts' shard entries in part order; an incomplete part, or one that does not start where the
    one before ended (checked when no part is missing), adds to ``problems``."""
    shards: list[dict[str, Any]] = []
    for i in sorted(journals):
        journal, part = journals[i], journals[i]["part"]
        if not journal.get("complete"):
            problems.append(
                f"part {i} of {count} is not complete ({len(journal['shards'])} of {part.get('shards')} "
                "shards written): rerun it"
            )
        if check_starts and part.get("first_shard") != len(shards):
            problems.append(
                f"part {i} of {count} starts at shard {part.get('first_shard')}, not {len(shards)}"
            )
        shards += [{k: e.get(k) for k in ENTRY_KEYS} for e in journal["shards"]]
    return shards


def _shard_problems(out_dir: Path, name: str, shards: list[dict[str, Any]], maxcount: Any) -> list[str]:
    found = (
        _shard_problem(out_dir, name, k, entry, maxcount, last=k == len(shards) - 1)
        for k, entry in enumerate(shards)
    )
    return [problem for problem in found if problem is not None]


def _shard_problem(
    out_dir: Path, name: str, k: int, entry: dict[str, Any], maxcount: Any, *, last: bool
) -> str | None:
    """What is wrong with shard ``k`` of the joined list (its first problem), None if nothing: the entry,
    then the file (its size and SHA-256 read in full), then its place (only the last may be short)."""
    count = entry["count"]
    path = out_dir / str(entry["name"])
    if not (isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= maxcount):
        return f"shard {k} has a malformed journal entry {entry!r}"
    if entry["name"] != shard_name(name, k):
        return f"shard {k} is recorded as {entry['name']!r}"
    if not path.is_file():
        return f"{path.name} is missing"
    if not shard_matches(path, entry):
        return f"{path.name} differs from its part's journal (size or SHA-256)"
    if count != maxcount and not last:
        return f"{path.name} holds {count} samples, only the last shard may hold fewer"
    return None


def _refuse(out_dir: Path, name: str, problems: list[str]) -> None:
    if problems:
        raise ShardError(f"{out_dir}: cannot publish {name!r}: " + "; ".join(problems))


def _publish(out_dir: Path, manifest: dict[str, Any], shards: list[dict[str, Any]]) -> dict[str, Any]:
    """``sizes.json``, the tables, then ``manifest.json``: the files one writer's ``close`` writes."""
    try:
        write_json_atomic(out_dir / SIZES, {s["name"]: s["count"] for s in shards}, indent=2)
        # the tables a one-process writer would have written, from the shards themselves (same bytes)
        manifest["metadata_tables"] = publish_tables(out_dir, shards, table_format())
        write_json_atomic(out_dir / MANIFEST, manifest, indent=2)
    except OutputError as exc:
        raise ShardError(f"{exc}; the shard set was not published") from exc.__cause__
    return manifest


def _remove(paths: list[Path], out_dir: Path) -> None:
    """The manifest vouches for the set now; a journal a crash leaves is inert (and removed next time)."""
    with contextlib.suppress(OSError):
        for path in paths:
            path.unlink(missing_ok=True)
        fsync_dir(out_dir)
