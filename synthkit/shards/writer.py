"""Writing a shard set: WebDataset tar shards plus ``sizes.json`` and ``manifest.json``.

Two guarantees drive the design:

* Atomic publication. Every file is written under a hidden temp name, fsynced and ``os.replace``d into place,
  and ``manifest.json`` is written last, so a reader that trusts only directories with a manifest never sees a
  half-written set, whatever point a crash or a full disk interrupts the writer at.
* Byte-identical output for identical inputs. Tar headers are pinned (mtime, owner, mode, GNU format, UTF-8)
  and PNGs carry no timestamps or text chunks, so shard hashes identify content and reruns can be compared.

Example:
    >>> with ShardSetWriter("out/hard", "hard", manifest_fields={"producer": "hsg"}) as w:  # doctest: +SKIP
    ...     w.write("hard_000000", image, {"kind": "hard", "producer": "hsg"}, cls=None)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from synthkit.shards.format import (
    FORMAT,
    MANIFEST,
    MANIFEST_RESERVED,
    SIZES,
    VERSION,
    ShardError,
    ShardSetExistsError,
    is_safe_name,
    shard_name,
    shard_pattern,
    temp_name,
    validate_meta,
)

# Fixed so that PNG bytes (and hence shard hashes) depend only on the pixels.
PNG_COMPRESS_LEVEL = 6
# Keys become tar member names that other tools decode with their own defaults: keep them printable ASCII,
# and without the dot that webdataset uses to split the key from the extension.
_KEY = re.compile(r"[!-~]+")
_KEY_FORBIDDEN = "./\\"
_BUFFER_BYTES = 1 << 20


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "disk full (ENOSPC)"
    if exc.errno == getattr(errno, "EDQUOT", None):
        return "disk quota exceeded (EDQUOT)"
    code = errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or str(exc)
    return f"{reason} ({code})" if code else reason


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; platforms that cannot open directories (Windows) skip it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    def publish(self) -> None:
        self._flush()
        os.fsync(self._fd)
        fd, self._fd = self._fd, -1
        os.close(fd)
        os.replace(self.temp, self.final)
        _fsync_dir(self.final.parent)

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


def _write_json(path: Path, obj: Any, **dump_kwargs: Any) -> None:
    out = _AtomicFile(path)
    try:
        out.write((json.dumps(obj, sort_keys=True, **dump_kwargs) + "\n").encode("utf-8"))
        out.publish()
    except OSError as exc:
        out.discard()
        raise ShardError(f"cannot write {path}: {_os_reason(exc)}") from exc


class ShardSetWriter:
    """Write samples into ``out_dir`` as shards ``NAME-000000.tar``, ... and publish the set on close.

    Each sample becomes ``{key}.png``, ``{key}.json`` and, only when a true label is given, ``{key}.cls``.
    Use it as a context manager: a clean exit publishes (``sizes.json``, then ``manifest.json``), an exception
    removes the shard in progress and publishes nothing, so a failed run can never pass for a complete set.

    Args:
        out_dir: directory of this one set; created if missing; must not already hold a set named ``name``.
        name: set name, used as the shard file prefix.
        maxcount: most samples per shard.
        manifest_fields: provenance merged into the manifest (``config``, ``producer``, ``created_by``,
            ``seed``, ...); must be JSON-serialisable and may not use the reserved manifest keys.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        name: str,
        *,
        maxcount: int = 1000,
        manifest_fields: dict[str, Any],
    ) -> None:
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

        self.out_dir = Path(out_dir)
        self.name = name
        self.maxcount = maxcount
        self._fields = dict(manifest_fields)
        self._shards: list[dict[str, Any]] = []
        self._file: _AtomicFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0
        self._keys: set[str] = set()
        self._closed = False
        self._failed = False
        self._manifest: dict[str, Any] | None = None
        self._prepare_directory()

    @property
    def total(self) -> int:
        """Samples written so far."""
        return sum(s["count"] for s in self._shards) + self._in_shard

    def _prepare_directory(self) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            entries = [p.name for p in self.out_dir.iterdir()]
        except OSError as exc:
            raise ShardError(f"cannot use output directory {self.out_dir}: {_os_reason(exc)}") from exc
        pattern = shard_pattern(self.name)
        existing = [e for e in entries if e == MANIFEST or pattern.fullmatch(e)]
        if existing:
            raise ShardSetExistsError(
                f"{self.out_dir} already holds shard set files ({', '.join(sorted(existing)[:3])}); "
                "remove them or choose another directory"
            )
        # Leftovers of a killed writer: never published, so removing them loses nothing.
        stale = [e for e in entries if e.startswith(".") and e.endswith(".tar.tmp")]
        stale += [e for e in (temp_name(MANIFEST), temp_name(SIZES)) if e in entries]
        for entry in stale:
            try:
                (self.out_dir / entry).unlink()
            except OSError as exc:
                raise ShardError(
                    f"cannot remove stale temp file {self.out_dir / entry}: {_os_reason(exc)}"
                ) from exc

    def _check_open(self) -> None:
        if self._failed:
            raise ShardError(f"shard set {self.out_dir} failed earlier and cannot be continued or published")
        if self._closed:
            raise ValueError(f"shard set writer for {self.out_dir} is closed")

    def _fail(self, exc: OSError, path: Path) -> ShardError:
        self.abort()
        return ShardError(f"cannot write {path}: {_os_reason(exc)}; the shard set was not published")

    def write(self, key: str, image: np.ndarray, meta: dict, cls: int | None = None) -> None:
        """Add one sample; invalid input raises ValueError before anything is written."""
        self._check_open()
        _check_key(key)
        if key in self._keys:
            raise ValueError(f"sample key {key!r} was already written to this set")
        members = [(f"{key}.png", _encode_png(key, image)), (f"{key}.json", _encode_meta(key, meta))]
        cls_bytes = _encode_cls(key, cls)
        if cls_bytes is not None:
            members.append((f"{key}.cls", cls_bytes))

        path = self.out_dir / shard_name(self.name, len(self._shards))
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
        self._in_shard += 1
        if self._in_shard >= self.maxcount:
            self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._file is not None and self._tar is not None
        out = self._file
        try:
            self._tar.close()
            out.publish()
        except OSError as exc:
            raise self._fail(exc, out.final) from exc
        self._shards.append(
            {"name": out.final.name, "count": self._in_shard, "bytes": out.size, "sha256": out.sha256}
        )
        self._file, self._tar, self._in_shard = None, None, 0

    def close(self) -> dict[str, Any]:
        """Finish the last shard, publish ``sizes.json`` then ``manifest.json``; return the manifest."""
        if self._manifest is not None:
            return self._manifest
        self._check_open()
        if self._file is not None:
            self._finish_shard()
        manifest = {
            **self._fields,
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "shards": self._shards,
            "total": sum(s["count"] for s in self._shards),
        }
        try:
            _write_json(self.out_dir / SIZES, {s["name"]: s["count"] for s in self._shards}, indent=2)
            _write_json(self.out_dir / MANIFEST, manifest, indent=2)
        except ShardError as exc:
            self._failed = True
            raise ShardError(f"{exc}; the shard set was not published") from exc.__cause__
        self._closed = True
        self._manifest = manifest
        return manifest

    def abort(self) -> None:
        """Drop the shard in progress and never publish; completed shards stay, but without a manifest."""
        if self._file is not None:
            self._file.discard()
        self._file, self._tar, self._in_shard = None, None, 0
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
