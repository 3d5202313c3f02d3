"""The output directory of a shard set as a writer opens it: what it may find there, what it removes.

A new (not resumable) writer refuses a directory that already holds files of its set. A resumable one
(see :mod:`synthkit.shards.journal`) keeps the journaled shards that still match and removes the rest:

* a journal for other ``manifest_fields``, name or ``maxcount`` (another request) -> ShardSetExistsError;
* journaled shards are checked in order (size, then SHA-256); the matching prefix is kept, the first one
  that is missing or differs ends it (a ShardResumeWarning names a shard whose content changed), and it
  and every later shard are written again;
* shard files of the set not in the kept prefix and temp files are deleted (they were never recorded);
* shard files without any journal were not written by a resumable writer -> ShardSetExistsError.

A part of a set touches only its own shard files: the other parts' writers may be running beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthkit.atomic import os_reason
from synthkit.shards.decode import png_header
from synthkit.shards.format import (
    MANIFEST,
    SIZES,
    ShardError,
    ShardSetExistsError,
    shard_name,
    shard_pattern,
    temp_name,
)
from synthkit.shards.journal import ShardJournal
from synthkit.shards.reader import iter_shard_members


class SetDirectory:
    """The files of set ``journal.name`` (or of its part ``journal.part``) in ``journal.out_dir``."""

    def __init__(self, journal: ShardJournal) -> None:
        self.journal = journal
        self.path = journal.out_dir
        self.name = journal.name
        part = journal.part
        # a part's own shard files: the only ones of the set it may touch (other parts write the rest)
        self.own = None if part is None else {shard_name(self.name, k) for k in part.shard_indices()}

    def prepare(self, resume: bool) -> list[dict[str, Any]]:
        """Make the directory ready for a writer; return the shards kept from an interrupted run."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            entries = [p.name for p in self.path.iterdir()]
        except OSError as exc:
            raise ShardError(f"cannot use output directory {self.path}: {os_reason(exc)}") from exc
        if resume:
            return self._resume(entries)
        pattern = shard_pattern(self.name)
        existing = [e for e in entries if e == MANIFEST or pattern.fullmatch(e)]
        if existing:
            raise ShardSetExistsError(
                f"{self.path} already holds shard set files ({', '.join(sorted(existing)[:3])}); "
                "remove them or choose another directory"
            )
        self.remove(self.stale_temps(entries), "stale temp file")
        return []

    def stale_temps(self, entries: list[str]) -> list[str]:
        """Leftovers of a killed writer: never published, so removing them loses nothing. A part's are only
        its own (the other parts' writers may be running)."""
        journal = self.journal.path.name
        if self.own is not None:
            names = (*(temp_name(n) for n in sorted(self.own)), temp_name(journal))
            return [e for e in names if e in entries]
        stale = [e for e in entries if e.startswith(".") and e.endswith(".tar.tmp")]
        names = (temp_name(MANIFEST), temp_name(SIZES), temp_name(journal))
        return stale + [e for e in names if e in entries]

    def remove(self, entries: list[str], what: str) -> None:
        for entry in entries:
            try:
                (self.path / entry).unlink(missing_ok=True)
            except OSError as exc:
                raise ShardError(f"cannot remove {what} {self.path / entry}: {os_reason(exc)}") from exc

    def _own_shards(self, entries: list[str]) -> list[str]:
        pattern = shard_pattern(self.name)
        return sorted(e for e in entries if pattern.fullmatch(e) and (self.own is None or e in self.own))

    def _resume(self, entries: list[str]) -> list[dict[str, Any]]:
        if MANIFEST in entries:
            raise ShardSetExistsError(
                f"{self.path} already holds a published shard set ({MANIFEST}); there is nothing to "
                "resume: remove it or choose another directory"
            )
        shards = self._own_shards(entries)
        if self.journal.path.name in entries:
            recorded = self.journal.read()
            kept = self.journal.keep_matching(recorded, set(entries))
        elif shards:
            raise ShardSetExistsError(
                f"{self.path} holds shards without a manifest or a journal ({', '.join(shards[:3])}); "
                "they were not written by a resumable writer of this set: remove them or choose another "
                "directory"
            )
        else:
            recorded, kept = None, []
        keep = {s["name"] for s in kept}
        # Delete before the journal is shortened, so no shard is ever present without its journal entry.
        self.remove([e for e in shards if e not in keep], "unrecorded shard")
        self.remove(self.stale_temps(entries), "stale temp file")
        if kept != recorded:
            try:
                self.journal.record(kept)
            except OSError as exc:
                raise ShardError(f"cannot write {self.journal.path}: {os_reason(exc)}") from exc
        return kept


def kept_shapes(out_dir: Path, shards: list[dict[str, Any]], samples: int) -> set[tuple[int, int, int]]:
    """Image shapes (H, W, C) of the first ``samples`` samples of ``shards`` (the shards kept from an
    interrupted run), from their PNG headers, so that a resumed set declares what an uninterrupted one
    does."""
    shapes: set[tuple[int, int, int]] = set()
    for entry in shards:
        if samples <= 0:
            break
        path = out_dir / entry["name"]
        for key, parts in iter_shard_members(path):
            if "png" in parts:
                h = png_header(f"{path}: sample {key!r}", parts["png"])
                shapes.add((h.height, h.width, 3 if h.color == 2 else 1))
        samples -= entry["count"]
    return shapes
