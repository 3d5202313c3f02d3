"""Where shard bytes come from: local paths, fsspec URLs, ``pipe:`` commands and brace patterns.

A shard set location is a string, never a ``Path``: ``Path("http://host/set")`` collapses the double slash
into ``http:/host/set``, so a URL is kept as text from the command line to the byte stream. Three forms:

* a local path (``shards/hard``, ``/data/set/hard-000000.tar``);
* an fsspec URL (``http(s)://``, ``s3://``, ``gs://``, ``file://``, ...: anything with ``SCHEME://``), read
  through :func:`fsspec.open` (its filesystem packages, e.g. ``s3fs``, are optional extras);
* ``pipe:COMMAND``: the standard output of a shell command, as webdataset reads it (``pipe:curl -s URL``).
  The command is the user's own input, as in webdataset; a command that exits non-zero is an error.

A brace pattern (``hard-{000000..000009}.tar``) expands to a list of shard locations, as webdataset and
``braceexpand`` expand it.

Every read is bounded: the caller says how many bytes it accepts (a manifest's ``bytes`` for a shard), and one
more byte than that is an error, so a stream that never ends (a link to ``/dev/zero``, a server that keeps
sending) cannot hang a reader or fill its memory. Local files are checked with ``stat`` before they are
opened and again with ``fstat`` after: only regular files are read, and opening uses ``O_NONBLOCK`` so that a
FIFO swapped in between the two checks cannot block the open either.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Iterator
from typing import Any

from braceexpand import braceexpand

from synthkit.errors import ShardError

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
PIPE = "pipe:"
# Read in blocks of this size; a shard is hashed block by block as it arrives.
READ_BLOCK = 1 << 20
# Seconds an HTTP connection or read may stall before the read fails (a ShardError, not a hang).
NETWORK_TIMEOUT_S = 60


def is_url(location: str) -> bool:
    """True for ``SCHEME://...`` (fsspec) and ``pipe:...``; False for local paths."""
    return bool(_URL.match(location)) or location.startswith(PIPE)


def is_pipe(location: str) -> bool:
    return location.startswith(PIPE)


def as_location(location: str | os.PathLike[str]) -> str:
    """A location as text; a ``Path`` is accepted for local files (it cannot have held a URL intact)."""
    return os.fspath(location) if not isinstance(location, str) else location


def join(base: str, name: str) -> str:
    """``base/name`` for a local directory or a URL prefix, without normalising the URL."""
    if is_pipe(base):
        raise ShardError(f"{base}: a pipe: command is one byte stream, not a directory of files")
    if is_url(base):
        return base.rstrip("/") + "/" + name
    return os.path.join(base, name)


def parent(location: str) -> str:
    """The directory (or URL prefix) holding ``location``."""
    if is_url(location):
        head, _, _ = location.rstrip("/").rpartition("/")
        return head
    return os.path.dirname(location) or "."


def basename(location: str) -> str:
    return location.rstrip("/").rpartition("/")[2] if is_url(location) else os.path.basename(location)


def expand(location: str) -> list[str]:
    """Brace-expand ``location`` (``a-{000..002}.tar``: three names); without braces, it is itself."""
    if "{" not in location:
        return [location]
    return list(braceexpand(location))


def fs_and_path(url: str) -> tuple[Any, str]:
    """The fsspec filesystem and path of ``url``; HTTP reads get a timeout so a stalled server cannot hang
    a reader (S3 clients have botocore's own: 60 s per read)."""
    import fsspec  # imported here: local reads need none of it

    options: dict[str, Any] = {}
    if url.split(":", 1)[0].lower() in ("http", "https"):
        import aiohttp

        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=NETWORK_TIMEOUT_S, sock_read=NETWORK_TIMEOUT_S
        )
        options["client_kwargs"] = {"timeout": timeout}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:  # an unknown protocol or its package not installed
        raise ShardError(f"{url}: cannot read this URL: {exc}") from exc
    return fs, path


def _check_regular(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a device"
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a directory"
            if stat.S_ISDIR(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "not a regular file"
        )
        link = " (through a symlink)" if os.path.islink(path) else ""
        raise ShardError(f"{path}: is {kind}{link}; only regular files are read")


def _open_local(path: str) -> int:
    """An fd of the regular file ``path``; FIFOs, devices and directories are refused without blocking."""
    try:
        _check_regular(path, os.stat(path))  # follows symlinks: a link to a regular file is fine
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError as exc:
        raise ShardError(f"{path}: missing") from exc
    except OSError as exc:
        raise ShardError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    try:
        _check_regular(path, os.fstat(fd))  # the file opened is the file checked
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _too_long(location: str, limit: int, what: str) -> ShardError:
    return ShardError(f"{location}: more than {limit} bytes; {what}")


def iter_blocks(location: str, limit: int, what: str = "refused") -> Iterator[bytes]:
    """The bytes of ``location`` in blocks; more than ``limit`` bytes in all raises ShardError.

    ``what`` ends the message of that error (e.g. "the manifest says 1234").
    """
    total = 0
    if is_pipe(location):
        yield from _iter_pipe(location, limit, what)
        return
    if is_url(location):
        fs, path = fs_and_path(location)
        # HTTP: one streaming GET (block_size=0), so servers without range requests work and nothing is
        # fetched twice; other stores read ahead in blocks.
        streaming = location.split(":", 1)[0].lower() in ("http", "https")
        try:
            f = fs.open(path, "rb", block_size=0 if streaming else READ_BLOCK)
        except FileNotFoundError as exc:
            raise ShardError(f"{location}: missing") from exc
        except Exception as exc:  # fsspec backends raise their own types for network and auth errors
            raise ShardError(f"{location}: cannot open: {type(exc).__name__}: {exc}") from exc
        try:
            while True:
                try:
                    block = f.read(min(READ_BLOCK, limit + 1 - total))
                except Exception as exc:
                    raise ShardError(f"{location}: read failed: {type(exc).__name__}: {exc}") from exc
                if not block:
                    return
                total += len(block)
                if total > limit:
                    raise _too_long(location, limit, what)
                yield block
        finally:
            f.close()
    fd = _open_local(location)
    try:
        while True:
            try:
                block = os.read(fd, min(READ_BLOCK, limit + 1 - total))
            except OSError as exc:
                raise ShardError(f"{location}: read failed: {exc.strerror or exc}") from exc
            if not block:
                return
            total += len(block)
            if total > limit:
                raise _too_long(location, limit, what)
            yield block
    finally:
        os.close(fd)


def _iter_pipe(location: str, limit: int, what: str) -> Iterator[bytes]:
    command = location[len(PIPE) :]
    proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)  # noqa: S602
    assert proc.stdout is not None
    total = 0
    try:
        while True:
            block = proc.stdout.read1(READ_BLOCK) if hasattr(proc.stdout, "read1") else proc.stdout.read()
            if not block:
                break
            total += len(block)
            if total > limit:
                raise _too_long(location, limit, what)
            yield block
        code = proc.wait()
        if code != 0:
            raise ShardError(f"{location}: the command exited with status {code}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def read_bytes(location: str, limit: int, what: str = "refused") -> bytes:
    """All bytes of ``location`` (at most ``limit``; see iter_blocks)."""
    return b"".join(iter_blocks(location, limit, what))


def read_optional(location: str, limit: int) -> bytes | None:
    """The bytes of a small file, or None when it does not exist (a set without a manifest, ...)."""
    try:
        return read_bytes(location, limit, "too large for this kind of file")
    except ShardError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise


def is_local_dir(location: str) -> bool:
    return not is_url(location) and os.path.isdir(location)


def list_names(location: str) -> list[str] | None:
    """File names directly inside a directory or URL prefix, or None where the store cannot list."""
    if not is_url(location):
        try:
            return sorted(os.listdir(location))
        except OSError:
            return None
    if is_pipe(location):
        return None
    try:
        fs, path = fs_and_path(location)
        return sorted(basename(str(p)) for p in fs.ls(path, detail=False))
    except Exception:  # noqa: BLE001 - listing is best effort (plain HTTP servers need not offer it)
        return None
