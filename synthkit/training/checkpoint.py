"""Checkpoints that are published atomically and verified before use.

``accelerator.save_state`` writes models (safetensors), optimizers and RNG states; we add the loop's own
state as safetensors + JSON (never pickle), then a ``checksums.json`` of every file, and only then rename
the temporary directory to its final name. Before resuming, every file is checked against the checksums,
so a truncated or corrupt checkpoint fails with a message naming the file instead of resuming silently
from damaged state.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from synthkit.errors import CheckpointError
from synthkit.provenance import sha256_file

CHECKSUMS = "checksums.json"
PREFIX = "epoch_"


__all__ = ["CheckpointError", "publish", "verify_checkpoint"]


def write_checksums(directory: Path) -> None:
    sums = {
        rel: {"sha256": sha256_file(directory / rel), "bytes": (directory / rel).stat().st_size}
        for rel in _files(directory)
    }
    tmp = directory / (CHECKSUMS + ".tmp")
    tmp.write_text(json.dumps(sums, indent=2, sort_keys=True))
    os.replace(tmp, directory / CHECKSUMS)


def _files(directory: Path) -> list[str]:
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != CHECKSUMS
    )


def verify_checkpoint(directory: Path) -> None:
    """Raise :class:`CheckpointError` naming the first problem found.

    ``checksums.json`` must list every file of the directory, each with its size and sha256: an empty or
    partial list, an entry of the wrong shape, a path that leaves the directory, a file that is not listed,
    missing, truncated or altered is refused, so no damaged or foreign state is ever resumed from.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    sums_path = directory / CHECKSUMS
    if not sums_path.is_file():
        raise CheckpointError(f"checkpoint {directory} is incomplete: {CHECKSUMS} is missing")
    try:
        sums = json.loads(sums_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {directory}: {CHECKSUMS} is corrupt ({e})") from e
    if not isinstance(sums, dict) or not sums:
        raise CheckpointError(
            f"checkpoint {directory}: {CHECKSUMS} lists no files (expected one entry per file)"
        )
    for rel, expected in sums.items():
        ok = (
            isinstance(expected, dict)
            and isinstance(expected.get("bytes"), int)
            and not isinstance(expected.get("bytes"), bool)
            and isinstance(expected.get("sha256"), str)
            and len(expected["sha256"]) == 64
        )
        parts = Path(rel).parts
        if not ok or not parts or Path(rel).is_absolute() or ".." in parts:
            raise CheckpointError(f"checkpoint {directory}: {CHECKSUMS} has a malformed entry for {rel!r}")
        path = directory / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory}: file {rel} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(
                f"checkpoint {directory}: file {rel} is truncated or altered "
                f"({size} bytes, expected {expected['bytes']})"
            )
        if sha256_file(path) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {directory}: file {rel} is corrupt (sha256 mismatch)")
    unlisted = sorted(set(_files(directory)) - set(sums))
    if unlisted:
        raise CheckpointError(f"checkpoint {directory}: file {unlisted[0]} is not in {CHECKSUMS}")


def checkpoint_dirs(root: Path) -> list[Path]:
    """Published checkpoints under ``root``, oldest first (temporary directories are ignored)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def checkpoint_name(epoch: int) -> str:
    return f"{PREFIX}{epoch:04d}"


def publish(tmp_dir: Path, final_dir: Path) -> None:
    write_checksums(tmp_dir)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)


def prune(root: Path, keep: int) -> None:
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
