"""Verifying a published shard set end to end, reporting every problem rather than stopping at the first.

A user about to train on (or publish) a set wants the full list: which shards are missing, corrupt or
miscounted, which samples do not decode or break the metadata schema. So every check appends to
``VerifyReport.problems`` and the function itself never raises for a bad set.

Example:
    >>> report = verify_shard_set("shards/hard")  # doctest: +SKIP
    >>> report.ok, report.total, report.problems[:3]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthkit.shards.format import MANIFEST, SIZES, ShardError, shard_pattern, validate_meta
from synthkit.shards.manifest import read_manifest, sha256_file
from synthkit.shards.reader import DEFAULT_MAX_PIXELS, decode_sample, iter_shard_members
from synthkit.shards.tables import check_tables

# Per shard, so one systematically broken producer does not bury every other problem.
MAX_SAMPLE_PROBLEMS_PER_SHARD = 20


@dataclass
class VerifyReport:
    """Outcome of verify_shard_set.

    Attributes:
        problems: human-readable problems, each naming the file (and sample) concerned; empty when ok.
        total: samples that were read and decoded successfully.
        shards: shards listed in the manifest.
    """

    problems: list[str] = field(default_factory=list)
    total: int = 0
    shards: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_samples(
    path: Path, entry: dict[str, Any], keys: set[str], max_pixels: int, report: VerifyReport
) -> None:
    """Read a shard with the safe reader: counts, decoding, metadata schema and set-wide key uniqueness."""
    count = 0
    sample_problems: list[str] = []
    try:
        for key, parts in iter_shard_members(path):
            count += 1
            if key in keys:
                sample_problems.append(f"{path.name}: sample {key!r}: key also used in an earlier shard")
            keys.add(key)
            try:
                sample = decode_sample(str(path), key, parts, max_pixels=max_pixels)
            except ShardError as exc:
                sample_problems.append(str(exc))
                continue
            report.total += 1
            sample_problems += [f"{path.name}: sample {key!r}: {p}" for p in validate_meta(sample["meta"])]
    except ShardError as exc:  # the tar itself is broken: nothing after this point can be read
        report.problems.append(str(exc))
    report.problems += sample_problems[:MAX_SAMPLE_PROBLEMS_PER_SHARD]
    if len(sample_problems) > MAX_SAMPLE_PROBLEMS_PER_SHARD:
        hidden = len(sample_problems) - MAX_SAMPLE_PROBLEMS_PER_SHARD
        report.problems.append(f"{path.name}: ... and {hidden} more sample problems")
    if count != entry["count"]:
        report.problems.append(f"{path.name}: read {count} samples, the manifest says {entry['count']}")


def _check_shard_file(path: Path, entry: dict[str, Any], report: VerifyReport) -> bool:
    """Size and hash against the manifest; False when the file is missing or unreadable."""
    try:
        size = path.stat().st_size
        sha = sha256_file(path)
    except FileNotFoundError:
        report.problems.append(f"{path.name}: listed in the manifest but missing")
        return False
    except OSError as exc:
        report.problems.append(f"{path.name}: cannot read: {exc.strerror or exc}")
        return False
    if size != entry["bytes"]:
        report.problems.append(f"{path.name}: {size} bytes, the manifest says {entry['bytes']}")
    if sha != entry["sha256"]:
        report.problems.append(f"{path.name}: sha256 {sha} does not match the manifest's {entry['sha256']}")
    return True


def _check_sizes(directory: Path, manifest: dict[str, Any], report: VerifyReport) -> None:
    path = directory / SIZES
    expected = {entry["name"]: entry["count"] for entry in manifest["shards"]}
    try:
        sizes = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.problems.append(f"{SIZES}: missing")
        return
    except (OSError, ValueError) as exc:
        report.problems.append(f"{SIZES}: unreadable or not JSON: {exc}")
        return
    if sizes != expected:
        report.problems.append(f"{SIZES}: {sizes} does not agree with the manifest's counts {expected}")


def _check_strays(directory: Path, manifest: dict[str, Any], report: VerifyReport) -> None:
    listed = {entry["name"] for entry in manifest["shards"]}
    pattern = shard_pattern(str(manifest.get("name", "")))
    for entry in sorted(os.listdir(directory)):
        if pattern.fullmatch(entry) and entry not in listed:
            report.problems.append(f"{entry}: shard file not listed in the manifest")
        elif entry.startswith(".") and entry.endswith(".tmp"):
            report.problems.append(f"{entry}: leftover temp file from an interrupted writer")


def verify_shard_set(
    directory: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> VerifyReport:
    """Check a shard-set directory against its manifest and the format; see VerifyReport.

    Checks the manifest (present, valid, totals), each listed shard (exists, bytes, sha256, sample count,
    every image decodes, every metadata passes validate_meta, keys unique), ``sizes.json``, and stray shard or
    temp files. Reads every shard in full, so it costs one pass over the data.
    """
    directory = Path(directory)
    report = VerifyReport()
    try:
        manifest = read_manifest(directory)
    except ShardError as exc:
        report.problems.append(str(exc))
        return report
    if manifest is None:
        report.problems.append(
            f"{directory / MANIFEST}: missing, so the set is not published (or not complete)"
        )
        return report

    shards = manifest["shards"]
    report.shards = len(shards)
    listed_total = sum(entry["count"] for entry in shards)
    if manifest["total"] != listed_total:
        report.problems.append(f"{MANIFEST}: total {manifest['total']} != sum of shard counts {listed_total}")
    names = [entry["name"] for entry in shards]
    if len(set(names)) != len(names):
        report.problems.append(f"{MANIFEST}: a shard is listed more than once")

    keys: set[str] = set()
    for entry in shards:
        path = directory / entry["name"]
        if _check_shard_file(path, entry, report):
            _check_samples(path, entry, keys, max_pixels, report)
    _check_sizes(directory, manifest, report)
    _check_strays(directory, manifest, report)
    report.problems.extend(check_tables(directory, manifest))  # shards/tables.py
    return report
