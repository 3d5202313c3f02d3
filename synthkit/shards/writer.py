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

Example:
    >>> with ShardSetWriter("out/hard", "hard", manifest_fields={"producer": "hsg"}) as w:  # doctest: +SKIP
    ...     w.write("hard_000000", image, {"kind": "hard", "producer": "hsg"}, cls=None)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from synthkit.atomic import fsync_dir, os_reason, write_json_atomic
from synthkit.errors import OutputError
from synthkit.shards.decode import png_header
from synthkit.shards.format import (
    FORMAT,
    IMAGE_SHAPE,
    MANIFEST,
    MANIFEST_RESERVED,
    MIXED,
    SIZES,
    VERSION,
    ShardError,
    ShardSetExistsError,
    complete_meta,
    is_safe_name,
    shard_name,
    shard_pattern,
    temp_name,
    validate_meta,
)
from synthkit.shards.location import is_url
from synthkit.shards.manifest import sha256_file
from synthkit.shards.reader import iter_shard_members
from synthkit.shards.tables import COLUMNS, encode_table, publish_tables, table_format, table_row

# Fixed so that PNG bytes (and hence shard hashes) depend only on the pixels.
PNG_COMPRESS_LEVEL = 6
# Keys become tar member names that other tools decode with their own defaults: keep them printable ASCII,
# and without the dot that webdataset uses to split the key from the extension.
_KEY = re.compile(r"[!-~]+")
_KEY_FORBIDDEN = "./\\"
_BUFFER_BYTES = 1 << 20
JOURNAL_FORMAT = "synthkit-shards-journal"
JOURNAL_VERSION = 1


class ShardResumeWarning(UserWarning):
    """A resumed writer found a completed shard that no longer matches its journal and will rewrite it."""


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count`` of a set: its shards ``first_shard .. first_shard + shards - 1``.

    A set of ``total`` samples in shards of ``maxcount`` is cut into parts at shard boundaries (``Part.of``),
    so that shard k holds samples ``k * maxcount ..`` whichever part (process, array job) writes it, and the
    parts together are byte for byte the set one writer would write. ``shards/parts.py`` publishes them.
    """

    index: int
    count: int
    first_shard: int
    shards: int

    @classmethod
    def of(cls, total: int, maxcount: int, index: int, count: int) -> Part:
        """Part ``index`` of ``count`` of a set of ``total`` samples in shards of ``maxcount``: contiguous
        runs of whole shards, as even as shard counts allow (a part may be empty)."""
        if not 0 <= index < count:
            raise ValueError(f"part {index}/{count}: the index must be in [0, {count})")
        n_shards = -(-total // maxcount)
        first, end = index * n_shards // count, (index + 1) * n_shards // count
        return cls(index, count, first, end - first)

    def samples(self, total: int, maxcount: int) -> range:
        """The global indices of this part's samples."""
        return range(self.first_shard * maxcount, min(total, (self.first_shard + self.shards) * maxcount))

    def describe(self) -> dict[str, int]:
        return {
            "index": self.index,
            "count": self.count,
            "first_shard": self.first_shard,
            "shards": self.shards,
        }


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


class _AtomicFile:
    """A file written under a hidden temp name and published by fsync + ``os.replace``.

    Writes go through ``os.write`` on a raw descriptor (buffered here), so the SHA-256 and size are computed
    while writing instead of by re-reading the shard, and every byte that reaches the disk passes one place
    where an OSError can be turned into a clean failure.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        self.temp = final.with_name(temp_name(final.name))
        self.size = 0
        self._sha = hashlib.sha256()
        self._buf = bytearray()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
        self._fd = os.open(self.temp, flags, 0o644)

    def write(self, data: bytes) -> int:
        self._buf += data
        self._sha.update(data)
        self.size += len(data)
        if len(self._buf) >= _BUFFER_BYTES:
            self._flush()
        return len(data)

    def tell(self) -> int:
        return self.size

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def _flush(self) -> None:
        with memoryview(self._buf) as view:
            done = 0
            while done < len(view):
                done += os.write(self._fd, view[done:])
        self._buf.clear()

    def seal(self) -> None:
        """Make the temp file's bytes durable; ``size`` and ``sha256`` are final from here on."""
        self._flush()
        os.fsync(self._fd)
        fd, self._fd = self._fd, -1
        os.close(fd)

    def rename(self) -> None:
        os.replace(self.temp, self.final)
        fsync_dir(self.final.parent)

    def publish(self) -> None:
        self.seal()
        self.rename()

    def discard(self) -> None:
        """Best-effort cleanup on the failure path; the original error is what the caller must see."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            self.temp.unlink(missing_ok=True)


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


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    """A regular-file header with every field that could vary between runs or machines pinned."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _publish_json(path: Path, obj: Any, **dump_kwargs: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as JSON; raises the OSError after removing the temp file."""
    out: _AtomicFile | None = None
    try:
        out = _AtomicFile(path)
        out.write((json.dumps(obj, sort_keys=True, **dump_kwargs) + "\n").encode("utf-8"))
        out.publish()
    except OSError:
        if out is not None:
            out.discard()
        raise


class ShardSetWriter:
    """Write samples into ``out_dir`` as shards ``NAME-000000.tar``, ... and publish the set on close.

    Each sample becomes ``{key}.png``, ``{key}.json`` and, only when a true label is given, ``{key}.cls``.
    Use it as a context manager: a clean exit publishes (``sizes.json``, then ``manifest.json``), an exception
    removes the shard in progress and publishes nothing, so a failed run can never pass for a complete set.

    Resuming (``resume=True``) is for deterministic producers that can be killed mid-set (``synthkit
    generate``). The writer then keeps a journal, ``.NAME.journal.json``::

        {"format": "synthkit-shards-journal", "version": 1, "name": NAME, "maxcount": M,
         "fields_sha256": sha256(canonical JSON of manifest_fields),
         "shards": [{"name", "count", "bytes", "sha256"}, ...]}

    It is created (empty) before the first shard and rewritten atomically (temp + fsync + ``os.replace``)
    after each shard's bytes are fsynced and *before* the shard is renamed into place, so every ``NAME-*.tar``
    present is always listed with its true hash. Reopening a directory that holds a journal (and no manifest):

    * a journal for other ``manifest_fields``, name or ``maxcount`` (another request) -> ShardSetExistsError;
    * journaled shards are checked in order (size, then SHA-256); the matching prefix is kept, the first one
      that is missing or differs ends it (a ShardResumeWarning names a shard whose content changed), and it
      and every later shard are written again;
    * shard files of the set not in the kept prefix and temp files are deleted (they were never recorded);
    * shard files without any journal were not written by a resumable writer -> ShardSetExistsError.

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
        if isinstance(out_dir, str) and is_url(out_dir):  # Path would make "s3://b/x" a local "s3:/b/x"
            raise ValueError(
                f"{out_dir} is a URL: write through synthkit.shards.output.open_output (a staging directory "
                "whose files are uploaded as they complete), not into the URL as a local path"
            )
        if not isinstance(name, str) or not is_safe_name(name):
            raise ValueError(f"shard set name {name!r} must be letters, digits, '_', '-' or '.', not hidden")
        if isinstance(maxcount, bool) or not isinstance(maxcount, int) or maxcount < 1:
            raise ValueError(f"maxcount must be a positive integer, got {maxcount!r}")
        if not isinstance(manifest_fields, dict):
            raise ValueError(f"manifest_fields must be a dict, got {type(manifest_fields).__name__}")
        clash = sorted(set(manifest_fields) & set(MANIFEST_RESERVED))
        if clash:
            raise ValueError(f"manifest_fields may not set the reserved manifest keys {clash}")
        try:  # fail now, not after hours of generation, if the provenance cannot be written
            json.dumps(manifest_fields, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"manifest_fields is not JSON-serialisable: {exc}") from exc
        if part is not None and not resume:
            raise ValueError("a part of a set is always written resumably: pass resume=True")

        self.out_dir = Path(out_dir)
        self.part = part
        self._first = part.first_shard if part is not None else 0
        # a part's own shard files: the only ones of the set it may touch (other parts write the rest)
        self._own = (
            None
            if part is None
            else {shard_name(name, k) for k in range(part.first_shard, part.first_shard + part.shards)}
        )
        self.name = name
        self.maxcount = maxcount
        self.resume = resume
        self.resume_from = 0
        self._fields = dict(manifest_fields)
        self._shards: list[dict[str, Any]] = []
        self._file: _AtomicFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0
        self._keys: set[str] = set()
        self._shapes: set[tuple[int, int, int]] = set()  # (H, W, C) of the images written: image_shape
        self._closed = False
        self._failed = False
        self._manifest: dict[str, Any] | None = None
        self._journal = self.out_dir / journal_name(name, part)
        self._on_publish = on_publish
        self._published: set[str] = set()
        # a part's tables are built by whoever publishes the parts (shards/parts.py), from the tars
        self._table_format = table_format() if tables and part is None else None
        self._rows: list[tuple[Any, ...]] = []  # the table rows of the shard in progress (COLUMNS order)
        self._tables: dict[str, bytes] = {}  # completed shard -> its encoded table (bounded memory)
        self._prepare_directory()

    @property
    def total(self) -> int:
        """Samples written so far, including those kept from an interrupted run."""
        return sum(s["count"] for s in self._shards) + self._in_shard

    @property
    def completed_shards(self) -> list[dict[str, Any]]:
        """The published shards so far (``name``, ``count``, ``bytes``, ``sha256``), in order.

        Right after a resume these are the kept shards, which a caller can read back (safely, with
        ``iter_shard``) to rebuild per-sample results without regenerating them.
        """
        return [dict(s) for s in self._shards]

    def _prepare_directory(self) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            entries = [p.name for p in self.out_dir.iterdir()]
        except OSError as exc:
            raise ShardError(f"cannot use output directory {self.out_dir}: {os_reason(exc)}") from exc
        pattern = shard_pattern(self.name)
        if self.resume:
            self._prepare_resume(entries)
            return
        existing = [e for e in entries if e == MANIFEST or pattern.fullmatch(e)]
        if existing:
            raise ShardSetExistsError(
                f"{self.out_dir} already holds shard set files ({', '.join(sorted(existing)[:3])}); "
                "remove them or choose another directory"
            )
        self._remove(self._stale_temps(entries), "stale temp file")

    def _stale_temps(self, entries: list[str]) -> list[str]:
        """Leftovers of a killed writer: never published, so removing them loses nothing. A part's are only
        its own (the other parts' writers may be running)."""
        if self._own is not None:
            names = (*(temp_name(n) for n in sorted(self._own)), temp_name(self._journal.name))
            return [e for e in names if e in entries]
        stale = [e for e in entries if e.startswith(".") and e.endswith(".tar.tmp")]
        names = (temp_name(MANIFEST), temp_name(SIZES), temp_name(self._journal.name))
        return stale + [e for e in names if e in entries]

    def _remove(self, entries: list[str], what: str) -> None:
        for entry in entries:
            try:
                (self.out_dir / entry).unlink(missing_ok=True)
            except OSError as exc:
                raise ShardError(f"cannot remove {what} {self.out_dir / entry}: {os_reason(exc)}") from exc

    def _prepare_resume(self, entries: list[str]) -> None:
        pattern = shard_pattern(self.name)
        if MANIFEST in entries:
            raise ShardSetExistsError(
                f"{self.out_dir} already holds a published shard set ({MANIFEST}); there is nothing to "
                "resume: remove it or choose another directory"
            )
        shards = sorted(e for e in entries if pattern.fullmatch(e) and (self._own is None or e in self._own))
        if self._journal.name not in entries:
            if shards:
                raise ShardSetExistsError(
                    f"{self.out_dir} holds shards without a manifest or a journal ({', '.join(shards[:3])}); "
                    "they were not written by a resumable writer of this set: remove them or choose another "
                    "directory"
                )
            kept: list[dict[str, Any]] = []
            journal_ok = False
        else:
            recorded = self._read_journal()
            kept = self._verify_journal(recorded, set(entries))
            journal_ok = kept == recorded
        keep = {s["name"] for s in kept}
        # Delete before the journal is shortened, so no shard is ever present without its journal entry.
        self._remove([e for e in shards if e not in keep], "unrecorded shard")
        self._remove(self._stale_temps(entries), "stale temp file")
        self._shards = kept
        self.resume_from = sum(s["count"] for s in kept)
        if not journal_ok:
            try:
                self._write_journal(kept)
            except OSError as exc:
                raise ShardError(f"cannot write {self._journal}: {os_reason(exc)}") from exc

    def _read_journal(self) -> list[dict[str, Any]]:
        path = self._journal
        try:
            journal = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ShardError(
                f"{path}: cannot read the resume journal: {exc}; remove the directory to start over"
            ) from exc
        if not isinstance(journal, dict) or journal.get("format") != JOURNAL_FORMAT:
            raise ShardError(f"{path}: not a {JOURNAL_FORMAT} file; remove the directory to start over")
        if journal.get("version") != JOURNAL_VERSION:
            raise ShardError(
                f"{path}: journal version {journal.get('version')!r}, this synthkit resumes version "
                f"{JOURNAL_VERSION}; remove the directory to start over"
            )
        mine = {"name": self.name, "maxcount": self.maxcount, "fields_sha256": fields_digest(self._fields)}
        if self.part is not None:
            mine["part"] = self.part.describe()
        differs = [k for k, v in mine.items() if journal.get(k) != v]
        if differs:
            raise ShardSetExistsError(
                f"{self.out_dir} holds an interrupted shard set that cannot be resumed as this one: it was "
                f"started by a different request (its journal {path.name} differs in {', '.join(differs)}; "
                "the manifest fields include the config and software versions); remove it or choose another "
                "directory"
            )
        shards = journal.get("shards")
        if not isinstance(shards, list):
            raise ShardError(f"{path}: 'shards' must be a list; remove the directory to start over")
        if self.part is not None and len(shards) > self.part.shards:
            raise ShardError(
                f"{path}: more shards than part {self.part.index}; remove the directory to start over"
            )
        for i, entry in enumerate(shards):
            ok = (
                isinstance(entry, dict)
                and entry.get("name") == shard_name(self.name, self._first + i)
                and _is_int(entry.get("count"))
                and 1 <= entry["count"] <= self.maxcount
                and (entry["count"] == self.maxcount or i == len(shards) - 1)
                and _is_int(entry.get("bytes"))
                and isinstance(entry.get("sha256"), str)
            )
            if not ok:
                raise ShardError(
                    f"{path}: shards[{i}] is malformed ({entry!r}); remove the directory to start over"
                )
        return [{k: e[k] for k in ("name", "count", "bytes", "sha256")} for e in shards]

    def _verify_journal(self, recorded: list[dict[str, Any]], entries: set[str]) -> list[dict[str, Any]]:
        """The longest prefix of journaled shards whose files match; see the class docstring."""
        kept: list[dict[str, Any]] = []
        for i, entry in enumerate(recorded):
            path = self.out_dir / entry["name"]
            temp = path.with_name(temp_name(path.name))
            last = i == len(recorded) - 1
            if entry["name"] not in entries and last and temp.name in entries and shard_matches(temp, entry):
                # killed between the journal update and the rename: finish the publication
                try:
                    os.replace(temp, path)
                    fsync_dir(self.out_dir)
                except OSError as exc:
                    raise ShardError(f"cannot publish {path}: {os_reason(exc)}") from exc
            elif entry["name"] not in entries:  # not renamed yet, or removed: either way, write it again
                break
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

    def _write_journal(
        self,
        shards: list[dict[str, Any]],
        complete: bool = False,
        shapes: set[tuple[int, int, int]] = frozenset(),
    ) -> None:
        """Record ``shards`` as complete; raises OSError (the old journal stays intact).

        A part's journal also carries the manifest fields (whoever publishes the parts writes the manifest
        from them) and, once the part is closed, ``complete`` and the image shapes it wrote (the manifest
        declares the set's)."""
        journal: dict[str, Any] = {
            "format": JOURNAL_FORMAT,
            "version": JOURNAL_VERSION,
            "name": self.name,
            "maxcount": self.maxcount,
            "fields_sha256": fields_digest(self._fields),
            "shards": shards,
        }
        if self.part is not None:
            journal.update(part=self.part.describe(), fields=self._fields, complete=complete)
            if complete:
                journal["image_shapes"] = sorted(list(shape) for shape in shapes)
        _publish_json(self._journal, journal, indent=1)

    def _check_open(self) -> None:
        if self._failed:
            raise ShardError(f"shard set {self.out_dir} failed earlier and cannot be continued or published")
        if self._closed:
            raise ValueError(f"shard set writer for {self.out_dir} is closed")

    def _fail(self, exc: OSError, path: Path) -> ShardError:
        self.abort()
        return ShardError(f"cannot write {path}: {os_reason(exc)}; the shard set was not published")

    def write(self, key: str, image: np.ndarray, meta: dict, cls: int | None = None) -> None:
        """Add one sample; invalid input raises ValueError before anything is written."""
        self._check_open()
        if self._file is None and self._shards and self._shards[-1]["count"] < self.maxcount:
            raise ValueError(
                f"shard set {self.out_dir} was resumed after its last, partial shard "
                f"({self._shards[-1]['name']}); only close() remains, writing more would change the layout"
            )
        _check_key(key)
        if key in self._keys:
            raise ValueError(f"sample key {key!r} was already written to this set")
        members = [(f"{key}.png", _encode_png(key, image)), (f"{key}.json", _encode_meta(key, meta))]
        cls_bytes = _encode_cls(key, cls)
        if cls_bytes is not None:
            members.append((f"{key}.cls", cls_bytes))

        if self.part is not None and self._file is None and len(self._shards) >= self.part.shards:
            raise ValueError(
                f"part {self.part.index} of {self.part.count} of {self.out_dir} holds "
                f"{self.part.shards} shards; writing more would overlap the next part"
            )
        path = self.out_dir / shard_name(self.name, self._first + len(self._shards))
        try:
            if self._file is None:
                self._file = _AtomicFile(path)
                self._tar = tarfile.TarFile(
                    fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8"
                )
            assert self._tar is not None
            for member, data in members:
                self._tar.addfile(_tar_member(member, len(data)), io.BytesIO(data))
        except OSError as exc:
            raise self._fail(exc, path) from exc
        self._keys.add(key)
        self._shapes.add((image.shape[0], image.shape[1], image.shape[2] if image.ndim == 3 else 1))
        self._in_shard += 1
        if self._table_format is not None:
            # from the bytes written, as a reader (and a set published from parts) sees them
            row = table_row(key, path.name, json.loads(members[1][1]), None if cls is None else int(cls))
            self._rows.append(tuple(row[c] for c in COLUMNS))
        if self._in_shard >= self.maxcount:
            self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._file is not None and self._tar is not None
        out = self._file
        try:
            self._tar.close()
            out.seal()
        except OSError as exc:
            raise self._fail(exc, out.final) from exc
        entry = {"name": out.final.name, "count": self._in_shard, "bytes": out.size, "sha256": out.sha256}
        if self._table_format is not None:
            rows = [dict(zip(COLUMNS, r, strict=True)) for r in self._rows]
            self._tables[entry["name"]], self._rows = encode_table(rows, self._table_format), []
        if self.resume:  # journal first: a shard under its final name is always recorded
            try:
                self._write_journal([*self._shards, entry])
            except OSError as exc:
                raise self._fail(exc, self._journal) from exc
        try:
            out.rename()
        except OSError as exc:
            raise self._fail(exc, out.final) from exc
        self._shards.append(entry)
        self._publish(entry["name"])
        self._file, self._tar, self._in_shard = None, None, 0

    def close(self) -> dict[str, Any]:
        """Finish the last shard, publish ``sizes.json``, the metadata tables, then ``manifest.json``; return
        the manifest.

        A part publishes nothing: its journal is marked complete, and the returned record is
        ``{"part", "shards", "total"}`` (``shards/parts.py`` publishes the set, tables included, once every
        part is)."""
        if self._manifest is not None:
            return self._manifest
        self._check_open()
        if self._file is not None:
            self._finish_shard()
        shapes = self._shapes | self._kept_shapes()
        if self.part is not None:
            try:
                self._write_journal(self._shards, complete=True, shapes=shapes)
            except OSError as exc:
                raise self._fail(exc, self._journal) from exc
            self._closed = True
            self._manifest = {
                "part": self.part.describe(),
                "shards": self._shards,
                "total": sum(s["count"] for s in self._shards),
            }
            return self._manifest
        manifest = manifest_of(self.name, self._fields, self._shards, shapes)
        try:
            for entry in self._shards:  # shards kept from an interrupted run were never handed on
                self._publish(entry["name"])
            write_json_atomic(self.out_dir / SIZES, {s["name"]: s["count"] for s in self._shards}, indent=2)
            self._publish(SIZES)
            if self._table_format is not None and self._shards:
                manifest["metadata_tables"] = publish_tables(
                    self.out_dir, self._shards, self._table_format, self._tables, self._publish
                )
            write_json_atomic(self.out_dir / MANIFEST, manifest, indent=2)
            self._publish(MANIFEST)  # last: a reader trusts the set from this moment on
        except OutputError as exc:
            self._failed = True
            raise ShardError(f"{exc}; the shard set was not published") from exc.__cause__
        self._closed = True
        self._manifest = manifest
        if self.resume:  # the manifest now vouches for the set; a journal left by a crash here is inert
            with contextlib.suppress(OSError):
                self._journal.unlink(missing_ok=True)
                fsync_dir(self.out_dir)
        return manifest

    def _publish(self, name: str) -> None:
        if self._on_publish is not None and name not in self._published:
            try:
                self._on_publish(name)
            except ShardError:
                self._failed = True
                raise
            self._published.add(name)

    def _kept_shapes(self) -> set[tuple[int, int, int]]:
        """Image shapes of the shards kept from an interrupted run (from their PNG headers), so that a
        resumed set declares what an uninterrupted one does."""
        written = sum(s["count"] for s in self._shards) + self._in_shard
        if self.resume_from == 0 or written == 0:
            return set()
        shapes = set()
        kept = self.resume_from
        for entry in self._shards:
            if kept <= 0:
                break
            path = self.out_dir / entry["name"]
            for key, parts in iter_shard_members(path):
                if "png" in parts:
                    h = png_header(f"{path}: sample {key!r}", parts["png"])
                    shapes.add((h.height, h.width, 3 if h.color == 2 else 1))
            kept -= entry["count"]
        return shapes

    def abort(self) -> None:
        """Drop the shard in progress and never publish; completed shards (and a journal) stay."""
        if self._file is not None:
            self._file.discard()
        self._file, self._tar, self._in_shard = None, None, 0
        self._rows = []
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shard_matches(path: Path, entry: dict[str, Any]) -> bool:
    """Size first, so that a truncated shard costs a stat rather than a full read."""
    try:
        return path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]
    except OSError:
        return False
