"""Where a shard set is published: a local directory, or a remote store reached through fsspec.

Writers (:class:`synthkit.shards.writer.ShardSetWriter`, ``synthkit generate``, ``shards convert``) always
write into a local directory first, with the atomic temp-and-rename publication they use for local sets.
For a remote destination (``s3://bucket/set``, ``gs://...``, any fsspec URL that can be written) that
directory is a private staging directory, and each file is uploaded as soon as it is complete: every shard
when it is finished, then ``sizes.json``, any preview, and ``manifest.json`` **last**. Readers trust a set
only through its manifest, so a reader never sees a partial set, whatever point an upload stops at; an
object store's PUT makes each object appear whole or not at all.

A killed remote export leaves shards without a manifest at the destination (nothing trusts them) and
restarts from the beginning when run again: the staging directory is temporary. Plain ``http(s)://`` has
no standard upload and is refused as an output.

Uploads meet transient faults as reads do (``shards/location.py``): a PUT that fails with a dropped
connection, a timeout or a 5xx is tried again, with backoff, up to ``remote.attempts`` tries, and every try
is checked by the size of the object that landed; a permanent fault (403, a bucket that does not exist) is
not retried. A fault that stays ends the export with one line naming the file, the fault and the attempts.

One writer per local directory: :func:`open_output` takes the directory's lock (``synthkit/locks.py``),
released by ``finish``/``abandon``, so a second ``generate`` or ``shards convert`` into the same ``--out``
is refused in one line while the first runs. A part of a set (``--part I/N``, or one process of a launch)
takes the lock of its part instead (:func:`lock_part`): parts are written side by side, never two copies of
one part, and never a part while a whole set is being written there. A remote destination is not locked
(an object store has no atomic create-if-absent that every backend offers).

Example:
    >>> out = open_output("s3://bucket/hard")  # doctest: +SKIP
    >>> kw = {"manifest_fields": {"producer": "me"}, "on_publish": out.publish}  # doctest: +SKIP
    >>> with ShardSetWriter(out.local, "hard", **kw) as w:  # doctest: +SKIP
    ...     w.write("k0", image, {"kind": "real", "producer": "me"})
    >>> out.finish()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from synthkit.errors import ShardError
from synthkit.locks import LOCK_NAME, DirLock, LockHeld, live_locks
from synthkit.shards import location as loc
from synthkit.shards.manifest import read_manifest

_READ_ONLY = ("http", "https", "pipe")


class SetOutput:
    """A local destination: files are written in place; ``publish`` has nothing left to do."""

    url: str | None = None

    def __init__(self, local: Path) -> None:
        self.local = local
        self.lock: DirLock | None = None

    def acquire(self) -> None:
        """Lock the directory for this writer (created if missing); refused in one line if it is held, or
        while parts of a set are being written there."""
        self.lock = DirLock(self.local, "shard set directory")
        self.lock.acquire()
        parts = live_locks(self.local, f"{LOCK_NAME}.part-")
        if parts:
            self.release()
            path, holder = parts[0]
            part = path.name[len(LOCK_NAME) + 1 :]
            raise LockHeld(
                f"shard set directory {self.local} is being written in parts ({part} by pid "
                f"{holder.get('pid')} on {holder.get('host')}); wait for the parts to finish"
            )

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @property
    def where(self) -> str:
        """The destination as the user named it (for messages and manifests)."""
        return str(self.local)

    def published_manifest(self) -> dict[str, Any] | None:
        """The manifest already at the destination (a finished set), or None."""
        return read_manifest(self.local) if self.local.is_dir() else None

    def publish(self, name: str) -> None:
        """Make ``local/name`` visible at the destination (a no-op here: it was renamed into place)."""

    def finish(self) -> None:
        """Release what the output holds; the set is published."""
        self.release()

    def abandon(self) -> None:
        """Release what the output holds after a failure; nothing more is published."""
        self.release()


class RemoteOutput(SetOutput):
    """An fsspec destination, written through a private local staging directory; see the module."""

    def __init__(self, url: str) -> None:
        protocol = url.split(":", 1)[0].lower()
        if protocol in _READ_ONLY:
            raise ShardError(
                f"{url}: {protocol} locations can be read but not written; write to a local "
                "directory or an object store (s3://, gs://, ...)"
            )
        self.url = url.rstrip("/")
        self.fs, self.root = loc.fs_and_path(self.url)
        super().__init__(Path(tempfile.mkdtemp(prefix="synthkit-upload-")))

    @property
    def where(self) -> str:
        return self.url

    def published_manifest(self) -> dict[str, Any] | None:
        return read_manifest(self.url)

    def publish(self, name: str) -> None:
        """Upload ``local/name``; a transient fault is retried (``remote`` settings, ``shards/location.py``)
        and each try is checked by the size of the object that landed."""
        source = self.local / name
        target = f"{self.root}/{name}"
        size = source.stat().st_size

        def put() -> None:
            self.fs.put_file(str(source), target)
            landed = self.fs.info(target).get("size")
            if landed != size:
                raise loc.Fault(f"the uploaded object holds {landed} bytes, not {size}", transient=True)

        try:
            loc.call_with_retries(f"cannot upload {name} to {self.url}", put)
        except ShardError as exc:
            raise ShardError(f"{exc}; the set was not published") from exc.__cause__

    def acquire(self) -> None:
        """The staging directory is private: nothing to lock."""

    def finish(self) -> None:
        shutil.rmtree(self.local, ignore_errors=True)

    def abandon(self) -> None:
        shutil.rmtree(self.local, ignore_errors=True)


def open_output(destination: str | os.PathLike[str]) -> SetOutput:
    """The output for ``destination``: a local directory (locked for this writer until ``finish`` or
    ``abandon``), or an fsspec URL (see the module)."""
    where = loc.as_location(destination)
    if loc.is_url(where):
        return RemoteOutput(where)
    output = SetOutput(Path(where))
    output.acquire()
    return output


def lock_part(out_dir: Path, index: int, count: int, world: int = 1) -> DirLock:
    """Lock part ``index`` of ``count`` of the set in ``out_dir`` for this writer: refused in one line if
    another writer holds that part, or a whole set is being written there. Under a launch (``world`` > 1)
    every process calls it, and all are refused if any one is (so none waits for a peer that gave up)."""
    lock = DirLock(out_dir, "shard set directory", name=f"{LOCK_NAME}.part-{index}-of-{count}")
    failure: str | None = None
    try:
        lock.acquire()
        whole = [h for p, h in live_locks(out_dir, LOCK_NAME) if p.name == LOCK_NAME]
        if whole:
            raise LockHeld(
                f"shard set directory {out_dir} is being written by pid {whole[0].get('pid')} on "
                f"{whole[0].get('host')}; wait for it to finish"
            )
    except LockHeld as exc:
        failure = str(exc)
    if world > 1:
        from accelerate.utils import gather_object

        failures = [f for f in gather_object([failure]) if f is not None]
        failure = failure or (failures[0] if failures else None)
    if failure is not None:
        lock.release()
        raise LockHeld(failure)
    return lock
