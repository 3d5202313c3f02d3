"""Files that appear whole or not at all: written under a hidden temp name, fsynced, then renamed.

Every stage that publishes a file a reader may trust (manifests, reports, previews, run files) writes it
through here, so a kill or a full disk leaves the old file or none, never half of one, and the failure is
one line naming the file (``OutputError``).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from synthkit.errors import OutputError


def os_reason(exc: OSError) -> str:
    """A short reason for an OSError: 'disk full (ENOSPC)', 'Permission denied (EACCES)', ..."""
    if exc.errno == errno.ENOSPC:
        return "disk full (ENOSPC)"
    if exc.errno == getattr(errno, "EDQUOT", None):
        return "disk quota exceeded (EDQUOT)"
    code = errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or str(exc)
    return f"{reason} ({code})" if code else reason


def temp_name(final_name: str) -> str:
    """Hidden name a file is written under until complete, so a glob for the final names never sees it."""
    return f".{final_name}.tmp"


def fsync_dir(directory: Path) -> None:
    """Make a rename durable; platforms that cannot open directories (Windows) skip it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename. Raises OutputError naming the file.

    Bytes go through ``os.write`` on a raw descriptor, the one place every published byte passes (as in the
    shard writer), so an OSError at any point becomes one clean failure with the temp file removed.
    """
    path = Path(path)
    tmp = path.with_name(temp_name(path.name))
    fd = -1
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644)
        with memoryview(data) as view:
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {os_reason(exc)}") from exc


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any, **dump_kwargs: Any) -> None:
    """``obj`` as JSON (sorted keys, NaN refused), published atomically."""
    write_text_atomic(path, json.dumps(obj, sort_keys=True, allow_nan=False, **dump_kwargs) + "\n")


def save_image_atomic(path: str | os.PathLike[str], image: Any, format: str = "PNG") -> None:
    """A PIL image, published atomically."""
    buf = io.BytesIO()
    image.save(buf, format=format)
    write_bytes_atomic(path, buf.getvalue())


_SYSTEM_TREES = ("/proc", "/sys", "/dev")
# directories a run manages itself: a later --resume or train rewrites or deletes them
RUN_MANAGED = ("final", "checkpoints", "pools", ".tmp_final")


def _inside_a_run(path: Path) -> Path | None:
    """The run directory whose managed subdirectory ``path`` is in, if any."""
    for parent in path.parents:
        if (parent / "config.yaml").is_file() and (parent / "run.json").is_file():
            rel = path.relative_to(parent).parts
            return parent if rel and rel[0] in RUN_MANAGED else None
    return None


def check_output_dir(path: str | os.PathLike[str], what: str = "--out", *, create: bool = True) -> Path:
    """Make sure ``path`` can be a directory of outputs, creating it; one-line OutputError otherwise.

    Refused: a path that is a file (or a device such as /dev/null), a place under /proc, /sys or /dev,
    a directory a run manages itself (its ``final/``, ``checkpoints/``, ``pools/``: a later run would delete
    what is written there), and anywhere that cannot be written (a read-only filesystem, no permission).
    ``create=False`` checks the same without creating anything (the nearest existing parent is probed).
    """
    p = Path(path)
    absolute = p.resolve()
    if any(str(absolute) == t or str(absolute).startswith(t + "/") for t in _SYSTEM_TREES):
        raise OutputError(f"{what} {p} is in a system directory ({absolute}); choose a directory of your own")
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {p} exists and is not a directory")
    run = _inside_a_run(absolute)
    if run is not None:
        raise OutputError(
            f"{what} {p} is inside the run {run}'s own {absolute.relative_to(run).parts[0]}/, which the run "
            "rewrites; choose a directory outside it"
        )
    target = p
    if not create:  # probe the nearest existing directory, and leave nothing behind
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise OutputError(f"{what} {p}: {target} exists and is not a directory")
    try:
        if create:
            p.mkdir(parents=True, exist_ok=True)
        probe = target / f".synthkit-write-test-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{what} {p} cannot be written: {os_reason(exc)}") from exc
    return p


def check_output_file(path: str | os.PathLike[str], what: str) -> Path:
    """Make sure a file can be written at ``path`` (its directory is checked as by ``check_output_dir``)."""
    p = Path(path)
    absolute = p.resolve()
    if any(str(absolute) == t or str(absolute).startswith(t + "/") for t in _SYSTEM_TREES):
        raise OutputError(f"{what} {p} is in a system directory ({absolute}); choose a file of your own")
    if p.exists() and not p.is_file():
        raise OutputError(f"{what} {p} exists and is not a regular file")
    check_output_dir(p.parent if str(p.parent) else Path("."), what=f"the directory of {what}")
    return p


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # an old kernel or a filesystem without it
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: Path, target: Path) -> Path | None:
    """Put the complete directory ``new`` at ``target`` in one step; return where the old ``target`` went.

    Without an old ``target`` a rename does it. With one, the two are exchanged atomically (Linux
    ``renameat2(RENAME_EXCHANGE)``), so a reader sees the old directory or the new one, never neither; the
    old one is then at ``new`` (returned, for the caller to remove what it wrote there). Where exchange is
    not available the old directory is first renamed aside (``.TARGET.old``), a moment without ``target``.
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        fsync_dir(target.parent)
        return None
    if _exchange(new, target):
        fsync_dir(target.parent)
        return new
    aside = target.with_name(f".{target.name}.old")
    if aside.exists():
        raise OSError(errno.EEXIST, f"{aside} is in the way (left by an interrupted replacement)", str(aside))
    os.replace(target, aside)
    os.replace(new, target)
    fsync_dir(target.parent)
    return aside
