"""Why a write into the run directory failed, in a few words (the log, a checkpoint, ``final/``)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

__all__ = ["write_failure"]

#: how libraries that do their own I/O word ENOSPC (safetensors' Rust writer: "os error 28")
_DISK_FULL_WORDS = ("No space left on device", "os error 28")


def write_failure(exc: BaseException, where: Path) -> str:
    """Why a write failed, in a few words: a full disk is said as such whoever reported it."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk full (ENOSPC)"
    if any(words in str(exc) for words in _DISK_FULL_WORDS):
        return "disk full (ENOSPC)"
    try:
        if shutil.disk_usage(where).free < (1 << 20):
            return "disk full"
    except OSError:
        pass
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160] if text else ''}"
