"""Shard files on disk: written under a hidden temp name, fsynced and published by ``os.replace``.

:class:`AtomicFile` is the one place every byte of a shard (and of a writer's journal) passes on its way to
the disk, so the SHA-256 and size are known when the last byte is written and an OSError at any point can
be turned into one clean failure. :class:`OpenShard` is the tar shard a writer is filling: headers pinned
(mtime, owner, mode, GNU format, UTF-8) so that equal samples give equal bytes on any machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from synthkit.atomic import fsync_dir
from synthkit.shards.format import temp_name

_BUFFER_BYTES = 1 << 20


class AtomicFile:
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


def publish_json(path: Path, obj: Any, **dump_kwargs: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as JSON; raises the OSError after removing the temp file."""
    out: AtomicFile | None = None
    try:
        out = AtomicFile(path)
        out.write((json.dumps(obj, sort_keys=True, **dump_kwargs) + "\n").encode("utf-8"))
        out.publish()
    except OSError:
        if out is not None:
            out.discard()
        raise


def tar_member(name: str, size: int) -> tarfile.TarInfo:
    """A regular-file header with every field that could vary between runs or machines pinned."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class OpenShard:
    """The shard in progress: a GNU tar streamed into an :class:`AtomicFile` at the shard's temp name.

    Raises OSError as the disk does; the writer turns it into its ShardError. ``seal`` ends the tar and makes
    its bytes durable under the temp name and returns the shard's journal/manifest entry; ``rename`` then
    publishes it under its final name.
    """

    def __init__(self, path: Path) -> None:
        self.file = AtomicFile(path)
        self.count = 0  # samples in this shard
        try:
            self._tar = tarfile.TarFile(
                fileobj=self.file, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8"
            )
        except BaseException:
            self.file.discard()
            raise

    @property
    def path(self) -> Path:
        return self.file.final

    def add(self, members: list[tuple[str, bytes]]) -> None:
        """Append one sample's members (name, bytes), in order."""
        for member, data in members:
            self._tar.addfile(tar_member(member, len(data)), io.BytesIO(data))
        self.count += 1

    def seal(self) -> dict[str, Any]:
        """End the tar, fsync it; return ``{"name", "count", "bytes", "sha256"}``."""
        self._tar.close()
        self.file.seal()
        return {
            "name": self.path.name,
            "count": self.count,
            "bytes": self.file.size,
            "sha256": self.file.sha256,
        }

    def rename(self) -> None:
        self.file.rename()

    def discard(self) -> None:
        self.file.discard()
