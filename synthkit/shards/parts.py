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
from synthkit.shards.journal import JOURNAL_FORMAT, JOURNAL_VERSION, fields_digest, shard_matches
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


def _load(path: Path) -> dict[str, Any]:
    try:
        journal = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ShardError(f"{path}: cannot read the part journal: {exc}") from exc
    ok = (
        isinstance(journal, dict)
        and journal.get("format") == JOURNAL_FORMAT
        and journal.get("version") == JOURNAL_VERSION
        and isinstance(journal.get("part"), dict)
        and isinstance(journal.get("fields"), dict)
        and isinstance(journal.get("shards"), list)
        and all(isinstance(e, dict) for e in journal["shards"])
    )
    if not ok:
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
        manifest = read_manifest(out_dir) if out_dir.is_dir() else None
        if manifest is not None and name in (None, manifest.get("name")):
            return manifest  # published already, its journals gone
        raise ShardError(f"{out_dir} holds no parts of a shard set (no .NAME.part-*.journal.json)")
    if len(found) > 1:
        raise ShardError(f"{out_dir} holds the parts of several sets ({', '.join(sorted(found))}); name one")
    ((name, entries),) = found.items()
    counts = {n for _, n, _ in entries}
    if len(counts) > 1:
        raise ShardError(
            f"{out_dir} holds parts of {name!r} split in different ways (into {sorted(counts)} parts): "
            "an interrupted export must be finished with the split it started with"
        )
    (count,) = counts
    journals = {i: _load(path) for i, _, path in entries}

    problems: list[str] = []
    missing = [i for i in range(count) if i not in journals]
    if missing:
        problems.append(f"part(s) {', '.join(map(str, missing))} of {count} never started")
    digests = {j["fields_sha256"] for j in journals.values()}
    maxcounts = {j.get("maxcount") for j in journals.values()}
    if len(digests) > 1 or len(maxcounts) > 1:
        raise ShardError(f"{out_dir}: the parts of {name!r} were started by different requests; delete it")
    (maxcount,) = maxcounts
    fields = next(iter(journals.values()))["fields"]
    done = _already_published(out_dir, name, fields)
    if done is not None:
        _remove([p for _, _, p in entries], out_dir)
        return done

    shards: list[dict[str, Any]] = []
    for i in sorted(journals):
        journal, part = journals[i], journals[i]["part"]
        if not journal.get("complete"):
            problems.append(
                f"part {i} of {count} is not complete ({len(journal['shards'])} of {part.get('shards')} "
                "shards written): rerun it"
            )
        if part.get("first_shard") != len(shards) and not missing:
            problems.append(
                f"part {i} of {count} starts at shard {part.get('first_shard')}, not {len(shards)}"
            )
        shards += [{k: e.get(k) for k in ("name", "count", "bytes", "sha256")} for e in journal["shards"]]
    if problems:
        raise ShardError(f"{out_dir}: cannot publish {name!r}: " + "; ".join(problems))
    for k, entry in enumerate(shards):
        path = out_dir / str(entry["name"])
        count_ok = isinstance(entry["count"], int) and not isinstance(entry["count"], bool)
        if not count_ok or not 1 <= entry["count"] <= maxcount:
            problems.append(f"shard {k} has a malformed journal entry {entry!r}")
        elif entry["name"] != shard_name(name, k):
            problems.append(f"shard {k} is recorded as {entry['name']!r}")
        elif not path.is_file():
            problems.append(f"{path.name} is missing")
        elif not shard_matches(path, entry):
            problems.append(f"{path.name} differs from its part's journal (size or SHA-256)")
        elif entry["count"] != maxcount and k != len(shards) - 1:
            problems.append(f"{path.name} holds {entry['count']} samples, only the last shard may hold fewer")
    if problems:
        raise ShardError(f"{out_dir}: cannot publish {name!r}: " + "; ".join(problems))
    shapes = {tuple(shape) for j in journals.values() for shape in j.get("image_shapes", [])}
    if before_publish is not None:
        before_publish(fields, shards)
    manifest = manifest_of(name, fields, shards, shapes)
    try:
        write_json_atomic(out_dir / SIZES, {s["name"]: s["count"] for s in shards}, indent=2)
        # the tables a one-process writer would have written, from the shards themselves (same bytes)
        manifest["metadata_tables"] = publish_tables(out_dir, shards, table_format())
        write_json_atomic(out_dir / MANIFEST, manifest, indent=2)
    except OutputError as exc:
        raise ShardError(f"{exc}; the shard set was not published") from exc.__cause__
    _remove([p for _, _, p in entries], out_dir)
    return manifest


def _remove(paths: list[Path], out_dir: Path) -> None:
    """The manifest vouches for the set now; a journal a crash leaves is inert (and removed next time)."""
    with contextlib.suppress(OSError):
        for path in paths:
            path.unlink(missing_ok=True)
        fsync_dir(out_dir)
