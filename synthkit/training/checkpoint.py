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
        p.relative_to(directory).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != CHECKSUMS
    }
    tmp = directory / (CHECKSUMS + ".tmp")
    tmp.write_text(json.dumps(sums, indent=2, sort_keys=True))
    os.replace(tmp, directory / CHECKSUMS)


def verify_checkpoint(directory: Path) -> None:
    """Raise :class:`CheckpointError` naming the first problem found."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    sums_path = directory / CHECKSUMS
    if not sums_path.is_file():
        raise CheckpointError(f"checkpoint {directory} is incomplete: {CHECKSUMS} is missing")
    try:
        sums = json.loads(sums_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {directory}: {CHECKSUMS} is corrupt ({e})") from e
    for rel, expected in sums.items():
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
