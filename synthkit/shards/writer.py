"""Writing a shard set: WebDataset tar shards plus ``sizes.json`` and ``manifest.json``.

Two guarantees drive the design:

* Atomic publication. Every file is written under a hidden temp name, fsynced and ``os.replace``d into place,
  and ``manifest.json`` is written last, so a reader that trusts only directories with a manifest never sees a
  half-written set, whatever point a crash or a full disk interrupts the writer at.
* Byte-identical output for identical inputs. Tar headers are pinned (mtime, owner, mode, GNU format, UTF-8)
  and PNGs carry no timestamps or text chunks, so shard hashes identify content and reruns can be compared.
* Every sample's metadata has the same keys (``format.META_FIELDS``, null where a field does not apply), and
  each shard gets a metadata table (``metadata/%06d.parquet``, CSV without pyarrow: ``shards/tables.py``),
  written by ``close`` just before ``sizes.json`` and the manifest, which lists them, so a set can be queried
  without reading its tars. Until then the rows wait in memory (a few hundred bytes per sample), so a failed
  writer leaves no table behind.
* Resumable after a kill (``resume=True``). A hidden journal ``.NAME.journal.json`` records each completed
  shard (count, bytes, sha256) *before* the shard is renamed to its final name, so at every instant each
  ``NAME-*.tar`` in the directory is listed in the journal with its true hash. A reopened writer keeps the
  shards that still match, deletes everything else of the set, and a deterministic caller continues from
  ``writer.resume_from`` to the same bytes an uninterrupted run writes.

The jobs live apart: :mod:`~synthkit.shards.files` writes the bytes (atomic files, the tar shard in
progress), :mod:`~synthkit.shards.journal` keeps the resume journal, :mod:`~synthkit.shards.directory`
prepares the output directory (refuse, or resume), :func:`~synthkit.shards.manifest.manifest_of` defines
the manifest; this module encodes samples and drives them.

Example:
    >>> with ShardSetWriter("out/hard", "hard", manifest_fields={"producer": "hsg"}) as w:  # doctest: +SKIP
    ...     w.write("hard_000000", image, {"kind": "hard", "producer": "hsg"}, cls=None)
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from synthkit.atomic import os_reason, write_json_atomic
from synthkit.errors import OutputError
from synthkit.shards.directory import SetDirectory, kept_shapes
from synthkit.shards.files import OpenShard
from synthkit.shards.format import (
    MANIFEST,
    MANIFEST_RESERVED,
    SIZES,
    ShardError,
    complete_meta,
    is_safe_name,
    shard_name,
    validate_meta,
)
from synthkit.shards.journal import (
    JOURNAL_FORMAT,
    JOURNAL_VERSION,
    ShardJournal,
    ShardResumeWarning,
    fields_digest,
    journal_name,
    shard_matches,
)
from synthkit.shards.layout import Part
from synthkit.shards.location import is_url
from synthkit.shards.manifest import manifest_of
from synthkit.shards.tables import COLUMNS, encode_table, publish_tables, table_format, table_row

# re-exported: callers (export, parts, tests) name them here
__all__ = [
    "JOURNAL_FORMAT",
    "JOURNAL_VERSION",
    "Part",
    "ShardResumeWarning",
    "ShardSetWriter",
    "fields_digest",
    "journal_name",
    "manifest_of",
    "shard_matches",
]

# Fixed so that PNG bytes (and hence shard hashes) depend only on the pixels.
PNG_COMPRESS_LEVEL = 6
# Keys become tar member names that other tools decode with their own defaults: keep them printable ASCII,
# and without the dot that webdataset uses to split the key from the extension.
_KEY = re.compile(r"[!-~]+")
_KEY_FORBIDDEN = "./\\"


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key) or any(c in key for c in _KEY_FORBIDDEN):
        raise ValueError(
            f"sample key {key!r} must be non-empty printable ASCII without spaces, dots or slashes "
            "(webdataset splits member names at the first dot)"
        )


def _encode_png(key: str, image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 HxW / HxWx1 (stored as mode L) or HxWx3 (RGB) image, with no metadata chunks."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"sample {key!r}: image must be a uint8 numpy array, got {kind}")
    shape_ok = (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))) and image.size > 0
    if not shape_ok:
        raise ValueError(
            f"sample {key!r}: image must be HxW, HxWx1 or HxWx3 and non-empty, got {image.shape}"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _encode_meta(key: str, meta: dict) -> bytes:
    problems = validate_meta(meta)
    if problems:
        raise ValueError(f"sample {key!r}: invalid metadata: " + "; ".join(problems))
    meta = complete_meta(meta)  # one schema for every kind: absent fields as null
    try:
        text = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sample {key!r}: metadata is not JSON-serialisable: {exc}") from exc
    return text.encode("utf-8")


def _encode_cls(key: str, cls: int | None) -> bytes | None:
    if cls is None:
        return None
    if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)):
        raise ValueError(f"sample {key!r}: cls must be an integer label or None, got {cls!r}")
    return str(int(cls)).encode("ascii")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_request(
    out_dir: str | os.PathLike[str], name: Any, maxcount: Any, fields: Any, resume: bool, part: Part | None
) -> None:
    """Refuse a writer's arguments before anything is created (ValueError naming the first problem)."""
    if isinstance(out_dir, str) and is_url(out_dir):  # Path would make "s3://b/x" a local "s3:/b/x"
        raise ValueError(
            f"{out_dir} is a URL: write through synthkit.shards.output.open_output (a staging directory "
            "whose files are uploaded as they complete), not into the URL as a local path"
        )
    rows = (
        (
            isinstance(name, str) and is_safe_name(name),
            f"shard set name {name!r} must be letters, digits, '_', '-' or '.', not hidden",
        ),
        (_is_int(maxcount) and maxcount >= 1, f"maxcount must be a positive integer, got {maxcount!r}"),
    )
    for ok, message in rows:
        if not ok:
            raise ValueError(message)
    _check_fields(fields)
    if part is not None and not resume:
        raise ValueError("a part of a set is always written resumably: pass resume=True")


def _check_fields(fields: Any) -> None:
    """``manifest_fields``: a dict, none of the reserved manifest keys, JSON-serialisable."""
    if not isinstance(fields, dict):
        raise ValueError(f"manifest_fields must be a dict, got {type(fields).__name__}")
    clash = sorted(set(fields) & set(MANIFEST_RESERVED))
    if clash:
        raise ValueError(f"manifest_fields may not set the reserved manifest keys {clash}")
    try:  # fail now, not after hours of generation, if the provenance cannot be written
        json.dumps(fields, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"manifest_fields is not JSON-serialisable: {exc}") from exc


class TableRows:
    """The metadata-table rows of a writer: the shard in progress's rows (in ``COLUMNS`` order), and each
    completed shard's encoded table (bounded memory), published by ``publish`` on close."""

    def __init__(self, fmt: str) -> None:
        self.format = fmt
        self._rows: list[tuple[Any, ...]] = []
        self._tables: dict[str, bytes] = {}

    def add(self, key: str, shard: str, meta_json: bytes, cls: int | None) -> None:
        # from the bytes written, as a reader (and a set published from parts) sees them
        row = table_row(key, shard, json.loads(meta_json), None if cls is None else int(cls))
        self._rows.append(tuple(row[c] for c in COLUMNS))

    def finish_shard(self, shard: str) -> None:
        rows = [dict(zip(COLUMNS, r, strict=True)) for r in self._rows]
        self._tables[shard], self._rows = encode_table(rows, self.format), []

    def drop_shard(self) -> None:
        self._rows = []

    def publish(
        self, out_dir: Path, shards: list[dict[str, Any]], on_publish: Callable[[str], None]
    ) -> dict[str, Any]:
        """Write every shard's table (the kept shards' read back from their tars); the manifest's
        ``metadata_tables``."""
        return publish_tables(out_dir, shards, self.format, self._tables, on_publish)


class ShardSetWriter:
    """Write samples into ``out_dir`` as shards ``NAME-000000.tar``, ... and publish the set on close.

    Each sample becomes ``{key}.png``, ``{key}.json`` and, only when a true label is given, ``{key}.cls``.
    Use it as a context manager: a clean exit publishes (``sizes.json``, then ``manifest.json``), an exception
    removes the shard in progress and publishes nothing, so a failed run can never pass for a complete set.

    Resuming (``resume=True``) is for deterministic producers that can be killed mid-set (``synthkit
    generate``). The writer then keeps a journal, ``.NAME.journal.json`` (:mod:`synthkit.shards.journal`),
    recording each shard before it is renamed into place; reopening a directory that holds one (and no
    manifest) keeps the journaled shards that still match and removes the rest
    (:mod:`synthkit.shards.directory`; another request's journal is a ShardSetExistsError, a changed shard a
    ShardResumeWarning).

    ``resume_from`` is then the number of samples already durable, and **the caller must skip its first
    ``resume_from`` samples** and call ``write`` for the rest in the original order; a deterministic caller
    thus writes the same shards and manifest as an uninterrupted run. (Skipping keeps the writer from having
    to re-encode and compare samples it would throw away; the caller still has to reproduce its own random
    state up to that point.) The duplicate-key check covers only the samples written since this writer was
    opened. Publishing the manifest removes the journal. Without ``resume`` nothing of this happens and no
    journal is written.

    Args:
        out_dir: directory of this one set; created if missing; must not already hold a set named ``name``.
        name: set name, used as the shard file prefix.
        maxcount: most samples per shard.
        manifest_fields: provenance merged into the manifest (``config``, ``producer``, ``created_by``,
            ``seed``, ...); must be JSON-serialisable and may not use the reserved manifest keys.
        resume: continue an interrupted writer of the same set (see above) instead of refusing its shards.
        on_publish: called with each file's name once it is complete in ``out_dir`` (every shard as it is
            finished, then ``sizes.json``, then ``manifest.json`` last): how a remote output
            (:mod:`synthkit.shards.output`) uploads the set as it is written.
        part: write only this part of the set (``shards/parts.py`` publishes the parts together).
        tables: write a metadata table per shard (``metadata/%06d.parquet`` or ``.csv``, listed in the
            manifest as ``metadata_tables``) on close; a resumed writer reads the kept shards' rows back
            from them.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        name: str,
        *,
        maxcount: int = 1000,
        manifest_fields: dict[str, Any],
        resume: bool = False,
        on_publish: Callable[[str], None] | None = None,
        part: Part | None = None,
        tables: bool = True,
    ) -> None:
        _check_request(out_dir, name, maxcount, manifest_fields, resume, part)
        self.out_dir = Path(out_dir)
        self.part = part
        self.name = name
        self.maxcount = maxcount
        self.resume = resume
        self._fields = dict(manifest_fields)
        self._journal = ShardJournal(self.out_dir, name, maxcount, self._fields, part)
        self._shard: OpenShard | None = None  # the shard in progress
        self._keys: set[str] = set()
        self._shapes: set[tuple[int, int, int]] = set()  # (H, W, C) of the images written: image_shape
        self._closed = False
        self._failed = False
        self._manifest: dict[str, Any] | None = None
        self._on_publish = on_publish
        self._published: set[str] = set()
        # a part's tables are built by whoever publishes the parts (shards/parts.py), from the tars
        self._tables = TableRows(table_format()) if tables and part is None else None
        self._shards: list[dict[str, Any]] = SetDirectory(self._journal).prepare(resume)
        self.resume_from = sum(s["count"] for s in self._shards)

    @property
    def total(self) -> int:
        """Samples written so far, including those kept from an interrupted run."""
        in_shard = self._shard.count if self._shard is not None else 0
        return sum(s["count"] for s in self._shards) + in_shard

    @property
    def completed_shards(self) -> list[dict[str, Any]]:
        """The published shards so far (``name``, ``count``, ``bytes``, ``sha256``), in order.

        Right after a resume these are the kept shards, which a caller can read back (safely, with
        ``iter_shard``) to rebuild per-sample results without regenerating them.
        """
        return [dict(s) for s in self._shards]

    def _check_open(self) -> None:
        if self._failed:
            raise ShardError(f"shard set {self.out_dir} failed earlier and cannot be continued or published")
        if self._closed:
            raise ValueError(f"shard set writer for {self.out_dir} is closed")

    def _check_not_after_partial(self) -> None:
        """A resumed set whose last shard is partial takes no more samples: only ``close`` remains."""
        if self._shard is None and self._shards and self._shards[-1]["count"] < self.maxcount:
            raise ValueError(
                f"shard set {self.out_dir} was resumed after its last, partial shard "
                f"({self._shards[-1]['name']}); only close() remains, writing more would change the layout"
            )

    def _check_part_room(self) -> None:
        """A part starts no shard past its own: the next part writes those."""
        if self.part is not None and self._shard is None and len(self._shards) >= self.part.shards:
            raise ValueError(
                f"part {self.part.index} of {self.part.count} of {self.out_dir} holds "
                f"{self.part.shards} shards; writing more would overlap the next part"
            )

    def _fail(self, exc: OSError, path: Path) -> ShardError:
        self.abort()
        return ShardError(f"cannot write {path}: {os_reason(exc)}; the shard set was not published")

    def write(self, key: str, image: np.ndarray, meta: dict, cls: int | None = None) -> None:
        """Add one sample; invalid input raises ValueError before anything is written."""
        self._check_open()
        self._check_not_after_partial()
        _check_key(key)
        if key in self._keys:
            raise ValueError(f"sample key {key!r} was already written to this set")
        members = [(f"{key}.png", _encode_png(key, image)), (f"{key}.json", _encode_meta(key, meta))]
        cls_bytes = _encode_cls(key, cls)
        if cls_bytes is not None:
            members.append((f"{key}.cls", cls_bytes))
        self._check_part_room()
        path = self.out_dir / shard_name(self.name, self._journal.first + len(self._shards))
        try:
            if self._shard is None:
                self._shard = OpenShard(path)
            self._shard.add(members)
        except OSError as exc:
            raise self._fail(exc, path) from exc
        self._keys.add(key)
        self._shapes.add((image.shape[0], image.shape[1], image.shape[2] if image.ndim == 3 else 1))
        if self._tables is not None:
            self._tables.add(key, path.name, members[1][1], cls)
        if self._shard.count >= self.maxcount:
            self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._shard is not None
        shard = self._shard
        try:
            entry = shard.seal()
        except OSError as exc:
            raise self._fail(exc, shard.path) from exc
        if self._tables is not None:
            self._tables.finish_shard(entry["name"])
        if self.resume:  # journal first: a shard under its final name is always recorded
            try:
                self._journal.record([*self._shards, entry])
            except OSError as exc:
                raise self._fail(exc, self._journal.path) from exc
        try:
            shard.rename()
        except OSError as exc:
            raise self._fail(exc, shard.path) from exc
        self._shards.append(entry)
        self._publish(entry["name"])
        self._shard = None

    def close(self) -> dict[str, Any]:
        """Finish the last shard, publish ``sizes.json``, the metadata tables, then ``manifest.json``; return
        the manifest.

        A part publishes nothing: its journal is marked complete, and the returned record is
        ``{"part", "shards", "total"}`` (``shards/parts.py`` publishes the set, tables included, once every
        part is)."""
        if self._manifest is not None:
            return self._manifest
        self._check_open()
        if self._shard is not None:
            self._finish_shard()
        shapes = self._shapes | kept_shapes(self.out_dir, self._shards, self.resume_from)
        self._manifest = self._close_part(shapes) if self.part is not None else self._publish_set(shapes)
        self._closed = True
        if self.resume and self.part is None:  # the manifest now vouches for the set
            self._journal.remove()
        return self._manifest

    def _close_part(self, shapes: set[tuple[int, int, int]]) -> dict[str, Any]:
        assert self.part is not None
        try:
            self._journal.record(self._shards, complete=True, shapes=shapes)
        except OSError as exc:
            raise self._fail(exc, self._journal.path) from exc
        return {
            "part": self.part.describe(),
            "shards": self._shards,
            "total": sum(s["count"] for s in self._shards),
        }

    def _publish_set(self, shapes: set[tuple[int, int, int]]) -> dict[str, Any]:
        """``sizes.json``, the tables, then ``manifest.json`` (last: a reader trusts the set from then on)."""
        manifest = manifest_of(self.name, self._fields, self._shards, shapes)
        try:
            for entry in self._shards:  # shards kept from an interrupted run were never handed on
                self._publish(entry["name"])
            write_json_atomic(self.out_dir / SIZES, {s["name"]: s["count"] for s in self._shards}, indent=2)
            self._publish(SIZES)
            if self._tables is not None and self._shards:
                manifest["metadata_tables"] = self._tables.publish(self.out_dir, self._shards, self._publish)
            write_json_atomic(self.out_dir / MANIFEST, manifest, indent=2)
            self._publish(MANIFEST)
        except OutputError as exc:
            self._failed = True
            raise ShardError(f"{exc}; the shard set was not published") from exc.__cause__
        return manifest

    def _publish(self, name: str) -> None:
        if self._on_publish is not None and name not in self._published:
            try:
                self._on_publish(name)
            except ShardError:
                self._failed = True
                raise
            self._published.add(name)

    def abort(self) -> None:
        """Drop the shard in progress and never publish; completed shards (and a journal) stay."""
        if self._shard is not None:
            self._shard.discard()
        self._shard = None
        if self._tables is not None:
            self._tables.drop_shard()
        self._failed = True

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        elif self._manifest is None:
            self.abort()
