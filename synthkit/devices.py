"""Which torch device a command runs on: ``--device`` of ``synthkit eval`` and ``synthkit audit``.

The default is the accelerator when there is one (CUDA), else the CPU. A name torch does not know, or a
device this machine lacks, is a :class:`~synthkit.errors.ConfigError` of one line (exit 2), raised before
any work starts rather than as a torch traceback in the middle of it.
"""

from __future__ import annotations

import torch

from synthkit.errors import ConfigError


def resolve_device(name: str | None, key: str = "--device") -> torch.device:
    """The device ``name`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...; None or ``auto``: the default)."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"{key} {name!r} is not a device name (cpu, cuda, cuda:N, mps, ...): {str(exc).splitlines()[0]}"
        ) from exc
    if dev.type == "meta":  # tensors without data: every score would be garbage
        raise ConfigError(f"{key} 'meta' holds no data; use cpu or an accelerator")
    try:
        torch.zeros(1, device=dev)
    except (RuntimeError, AssertionError, ValueError) as exc:  # "Torch not compiled with CUDA", no such index
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{key} {name!r} is not available on this machine: {first}") from exc
    return dev
