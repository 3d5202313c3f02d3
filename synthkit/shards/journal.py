"""The resume journal of a shard set: which shards a resumable writer has completed, with their hashes.

A resumable ``ShardSetWriter`` keeps ``.NAME.journal.json`` (one part of a set:
``.NAME.part-IIIII-of-NNNNN.journal.json``) in the set's directory::

    {"format": "synthkit-shards-journal", "version": 1, "name": NAME, "maxcount": M,
     "fields_sha256": sha256(canonical JSON of manifest_fields),
     "shards": [{"name", "count", "bytes", "sha256"}, ...]}

It is created (empty) before the first shard and rewritten atomically (temp + fsync + ``os.replace``) after
each shard's bytes are fsynced and *before* the shard is renamed into place, so every ``NAME-*.tar`` present
is always listed with its true hash. A part's journal also carries its place (``part``), the manifest fields
(``fields``: whoever publishes the parts writes the manifest from them) and, once the part is closed,
``"complete": true`` and the image shapes it wrote (``image_shapes``).

:class:`ShardJournal` writes it, reads it back (every field checked: it is input from disk) and finds the
prefix of journaled shards whose files still match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from synthkit.atomic import fsync_dir, os_reason
from synthkit.shards.files import publish_json
from synthkit.shards.format import ShardError, ShardSetExistsError, shard_name, temp_name
from synthkit.shards.layout import Part
from synthkit.shards.manifest import sha256_file

JOURNAL_FORMAT = "synthkit-shards-journal"
JOURNAL_VERSION = 1
ENTRY_KEYS = ("name", "count", "bytes", "sha256")
_START_OVER = "remove the directory to start over"


class ShardResumeWarning(UserWarning):
    """A resumed writer found a completed shard that no longer matches its journal and will rewrite it."""


def journal_name(name: str, part: Part | None = None) -> str:
    """Hidden file that records the completed shards of set ``name`` (or of one part of it) while a
    resumable writer runs."""
    if part is None:
        return f".{name}.journal.json"
    return f".{name}.part-{part.index:05d}-of-{part.count:05d}.journal.json"


def fields_digest(manifest_fields: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``manifest_fields``: what ties a journal to one request."""
    text = json.dumps(manifest_fields, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shard_matches(path: Path, entry: dict[str, Any]) -> bool:
    """Size first, so that a truncated shard costs a stat rather than a full read."""
    try:
        return path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]
    except OSError:
        return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry_is_well_formed(entry: Any, name: str, maxcount: int, last: bool) -> bool:
    """One journaled shard: its expected name, a count in [1, maxcount] (full unless last), integer bytes
    and a sha256 string."""
    if not isinstance(entry, dict):
        return False
    count = entry.get("count")
    if not (_is_int(count) and 1 <= count <= maxcount):
        return False
    checks = (
        entry.get("name") == name,
        count == maxcount or last,
        _is_int(entry.get("bytes")),
        isinstance(entry.get("sha256"), str),
    )
    return all(checks)


class ShardJournal:
    """The journal of one set (or one part) of ``out_dir``, for one request (name, maxcount, fields)."""

    def __init__(
        self, out_dir: Path, name: str, maxcount: int, fields: dict[str, Any], part: Part | None
    ) -> None:
        self.out_dir = out_dir
        self.name = name
        self.maxcount = maxcount
        self.fields = fields
        self.part = part
        self.first = part.first_shard if part is not None else 0
        self.path = out_dir / journal_name(name, part)

    def identity(self) -> dict[str, Any]:
        """What a journal must repeat to be this request's: name, maxcount, fields digest (and the part)."""
        mine: dict[str, Any] = {
            "name": self.name,
            "maxcount": self.maxcount,
            "fields_sha256": fields_digest(self.fields),
        }
        if self.part is not None:
            mine["part"] = self.part.describe()
        return mine

    def read(self) -> list[dict[str, Any]]:
        """The journaled shards (``ENTRY_KEYS`` each); ShardError for a journal that cannot be trusted,
        ShardSetExistsError for one of another request."""
        journal = self._load()
        self._check_header(journal)
        shards = journal.get("shards")
        self._check_shards(shards)
        return [{k: e[k] for k in ENTRY_KEYS} for e in shards]

    def _load(self) -> Any:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ShardError(f"{self.path}: cannot read the resume journal: {exc}; {_START_OVER}") from exc

    def _check_header(self, journal: Any) -> None:
        path = self.path
        if not isinstance(journal, dict) or journal.get("format") != JOURNAL_FORMAT:
            raise ShardError(f"{path}: not a {JOURNAL_FORMAT} file; {_START_OVER}")
        if journal.get("version") != JOURNAL_VERSION:
            raise ShardError(
                f"{path}: journal version {journal.get('version')!r}, this synthkit resumes version "
                f"{JOURNAL_VERSION}; {_START_OVER}"
            )
        differs = [k for k, v in self.identity().items() if journal.get(k) != v]
        if differs:
            raise ShardSetExistsError(
                f"{self.out_dir} holds an interrupted shard set that cannot be resumed as this one: it was "
                f"started by a different request (its journal {path.name} differs in {', '.join(differs)}; "
                "the manifest fields include the config and software versions); remove it or choose another "
                "directory"
            )

    def _check_shards(self, shards: Any) -> None:
        path = self.path
        if not isinstance(shards, list):
            raise ShardError(f"{path}: 'shards' must be a list; {_START_OVER}")
        if self.part is not None and len(shards) > self.part.shards:
            raise ShardError(f"{path}: more shards than part {self.part.index}; {_START_OVER}")
        for i, entry in enumerate(shards):
            name = shard_name(self.name, self.first + i)
            if not _entry_is_well_formed(entry, name, self.maxcount, last=i == len(shards) - 1):
                raise ShardError(f"{path}: shards[{i}] is malformed ({entry!r}); {_START_OVER}")

    def keep_matching(self, recorded: list[dict[str, Any]], entries: set[str]) -> list[dict[str, Any]]:
        """The longest prefix of ``recorded`` whose files (``entries``: the directory's names) match.

        A last shard found only under its temp name with its journaled hash was killed between the journal
        update and the rename: its publication is finished here. The first shard missing or changed ends
        the prefix (a changed one with a ShardResumeWarning)."""
        kept: list[dict[str, Any]] = []
        for i, entry in enumerate(recorded):
            path = self.out_dir / entry["name"]
            if entry["name"] not in entries:
                last = i == len(recorded) - 1
                if not (last and self._finish_rename(path, entry, entries)):
                    break  # not renamed yet, or removed: either way, written again
            elif not shard_matches(path, entry):
                warnings.warn(
                    f"{path}: does not match its journal entry (size or sha256 differ): it was changed after "
                    "it was written; it and every later shard will be rewritten",
                    ShardResumeWarning,
                    stacklevel=5,  # the code that opened the writer
                )
                break
            kept.append(entry)
        return kept

    def _finish_rename(self, path: Path, entry: dict[str, Any], entries: set[str]) -> bool:
        temp = path.with_name(temp_name(path.name))
        if temp.name not in entries or not shard_matches(temp, entry):
            return False
        try:
            os.replace(temp, path)
            fsync_dir(self.out_dir)
        except OSError as exc:
            raise ShardError(f"cannot publish {path}: {os_reason(exc)}") from exc
        return True

    def record(
        self,
        shards: list[dict[str, Any]],
        complete: bool = False,
        shapes: set[tuple[int, int, int]] = frozenset(),
    ) -> None:
        """Record ``shards`` as complete; raises OSError (the old journal stays intact).

        A part's journal also carries the manifest fields and, once the part is closed (``complete``), the
        image shapes it wrote (the manifest declares the set's)."""
        journal: dict[str, Any] = {
            "format": JOURNAL_FORMAT,
            "version": JOURNAL_VERSION,
            "name": self.name,
            "maxcount": self.maxcount,
            "fields_sha256": fields_digest(self.fields),
            "shards": shards,
        }
        if self.part is not None:
            journal.update(part=self.part.describe(), fields=self.fields, complete=complete)
            if complete:
                journal["image_shapes"] = sorted(list(shape) for shape in shapes)
        publish_json(self.path, journal, indent=1)

    def remove(self) -> None:
        """Once the manifest vouches for the set; a journal left by a crash here is inert."""
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
            fsync_dir(self.out_dir)
