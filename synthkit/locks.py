"""One writer per output: a lock file in the directory, holding the writer's identity.

A run directory (``synthkit train``) and a shard set's directory (``synthkit generate``, ``shards convert``,
``shards publish``) are written by one process at a time. The writer creates ``DIR/.synthkit.lock``
atomically (written whole under a temporary name, then hard-linked into place, which fails if a lock is
there already), holding JSON: the host, the process id, the process's start time and the boot it runs in,
the command and when the lock was taken. A second writer reads it and is refused in one line naming the
holder. The lock is removed when the writer ends, on success or failure.

A lock whose holder is provably gone is broken, with a warning: the holder ran on this host (same host
name and machine id) and either its process no longer exists, or a process with that id exists but
started at another time (the id was reused), or the host has rebooted since. A lock held from another
host is never broken automatically (a process there cannot be checked from here); the message says which
file to delete once that process is known to be gone. Breaking is serialised by ``flock`` on the directory
where the filesystem supports it, so two processes cannot both break one stale lock and both go on.

Parts of a set written by independent jobs (``--part I/N``) each take their own lock,
``.synthkit.lock.part-I-of-N``, and the set's lock is then taken only to publish.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from synthkit.atomic import os_reason
from synthkit.errors import OutputError

__all__ = ["LOCK_NAME", "DirLock", "LockHeld", "holder_alive", "live_locks"]

LOCK_NAME = ".synthkit.lock"

logger = logging.getLogger(__name__)


class LockHeld(OutputError):
    """Another writer holds the directory's lock."""


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _boot_id() -> str:
    return _read(Path("/proc/sys/kernel/random/boot_id"))


def _machine_id() -> str:
    return _read(Path("/etc/machine-id")) or _read(Path("/var/lib/dbus/machine-id"))


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, /proc/PID/stat field 22); None where unknown."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    if not stat or ")" not in stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    try:
        return int(fields[19])  # field 22 overall; fields[0] is field 3 (the state)
    except (IndexError, ValueError):
        return None


def identity() -> dict[str, Any]:
    """This process as a lock holder."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "machine_id": _machine_id(),
        "boot_id": _boot_id(),
        "pid": pid,
        "start_ticks": _start_ticks(pid),
        "command": " ".join(["synthkit", *sys.argv[1:]])[:300],
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def holder_alive(holder: dict[str, Any]) -> bool | None:
    """True: the holder is running; False: provably gone; None: cannot tell from here (another host)."""
    me = identity()
    if holder.get("host") != me["host"] or holder.get("machine_id", "") != me["machine_id"]:
        return None
    if _rebooted_since(holder, me):
        return False
    pid = holder.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    if not _pid_exists(pid):
        return False
    # a different start time: the id now belongs to a process that started later
    return not _started_at_another_time(pid, holder.get("start_ticks"))


def _rebooted_since(holder: dict[str, Any], me: dict[str, Any]) -> bool:
    """This host rebooted since the lock was taken (both boot ids known, and they differ)."""
    return bool(holder.get("boot_id") and me["boot_id"] and holder["boot_id"] != me["boot_id"])


def _pid_exists(pid: int) -> bool:
    """A process of this id runs on this host (a signal 0 is sent, nothing is delivered)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a process of another user: it exists
    return True


def _started_at_another_time(pid: int, ticks: Any) -> bool:
    """The process ``pid`` started at another time than the ``ticks`` the holder recorded (None: unknown)."""
    now = _start_ticks(pid)
    return isinstance(ticks, int) and now is not None and now != ticks


def _describe(holder: dict[str, Any]) -> str:
    what = f"pid {holder.get('pid')} on {holder.get('host')}"
    if holder.get("since"):
        what += f" since {holder['since']}"
    if holder.get("command"):
        what += f" ({holder['command']})"
    return what


def _load(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def live_locks(directory: Path, prefix: str = LOCK_NAME) -> list[tuple[Path, dict[str, Any]]]:
    """The locks in ``directory`` whose name starts with ``prefix`` and whose holder is not provably gone."""
    if not directory.is_dir():
        return []
    out = []
    for path in sorted(directory.glob(f"{prefix}*")):
        if path.name.endswith(".tmp"):
            continue
        holder = _load(path)
        if holder is not None and holder_alive(holder) is not False:
            out.append((path, holder))
    return out


class DirLock:
    """The write lock of ``directory`` (created if missing; removed again on release when this lock made it
    and it is empty). Use as a context manager, or ``acquire()`` / ``release()``.

    Args:
        directory: the output directory.
        what: how messages name it ("run directory", "shard set directory").
        name: the lock file's name (parts of a set: ``.synthkit.lock.part-I-of-N``).
    """

    def __init__(self, directory: str | os.PathLike[str], what: str, name: str = LOCK_NAME) -> None:
        self.directory, self.what, self.path = Path(directory), what, Path(directory) / name
        self.held = False
        self.created_dir = False
        self.me: dict[str, Any] = {}

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        if not self.directory.exists():
            try:
                self.directory.mkdir(parents=True)
                self.created_dir = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise OutputError(
                    f"{self.what} {self.directory} cannot be created: {os_reason(exc)}"
                ) from exc
        self.me = identity()
        with self._guard():
            if self._create():
                self.held = True
                return
            holder = _load(self.path)
            if holder is None and self._create():  # released between the two looks
                self.held = True
                return
            holder = holder or {}
            alive = holder_alive(holder) if holder else None
            if alive is False:
                logger.warning(
                    "%s: broke a stale lock of %s: that process is gone", self.directory, _describe(holder)
                )
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                if self._create():
                    self.held = True
                    return
                holder = _load(self.path) or {}
        self._give_up_dir()
        if not holder:
            raise LockHeld(
                f"{self.what} {self.directory} is locked by another writer ({self.path} is unreadable); "
                f"if no synthkit process is writing there, delete {self.path}"
            )
        hint = (
            f"wait for it to finish, or delete {self.path} if that process is gone"
            if holder_alive(holder) is None
            else "wait for it to finish"
        )
        raise LockHeld(f"{self.what} {self.directory} is being written by {_describe(holder)}; {hint}")

    def release(self) -> None:
        """Remove the lock if it is still ours (and the directory, if this lock made it and it is empty)."""
        if self.held:
            self.held = False
            holder = _load(self.path)
            if (
                holder
                and holder.get("pid") == self.me.get("pid")
                and holder.get("since") == self.me.get("since")
            ):
                with contextlib.suppress(OSError):
                    self.path.unlink()
        self._give_up_dir()

    def _give_up_dir(self) -> None:
        if self.created_dir:
            with contextlib.suppress(OSError):
                self.directory.rmdir()  # only if empty
            self.created_dir = self.directory.exists()

    def keep_dir(self) -> None:
        """The directory now holds what the writer made: release() leaves it, empty or not."""
        self.created_dir = False

    @contextlib.contextmanager
    def _guard(self):  # type: ignore[no-untyped-def]
        """flock on the directory, where supported: breaking a stale lock is then one process's act."""
        fd = -1
        try:
            fd = os.open(self.directory, os.O_RDONLY)
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except (OSError, ImportError):
            pass
        try:
            yield
        finally:
            if fd >= 0:
                os.close(fd)  # releases the flock

    def _create(self) -> bool:
        """Create the lock file whole (temp file, then a hard link that fails if one exists)."""
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        data = json.dumps(self.me, indent=2).encode("utf-8")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except OSError:  # no hard links here (some network filesystems): exclusive create
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                return True
        except OSError as exc:
            self._give_up_dir()
            raise OutputError(f"cannot lock {self.what} {self.directory}: {os_reason(exc)}") from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
