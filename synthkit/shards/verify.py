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
from typing import Any

from synthkit.shards import location as loc
from synthkit.shards.decode import DEFAULT_MAX_PIXELS
from synthkit.shards.format import MANIFEST, SIZES, ShardError, shard_pattern
from synthkit.shards.manifest import read_manifest
from synthkit.shards.reader import SetRules, ShardRef, read_shard
from synthkit.shards.tables import check_tables

# Per shard, so one systematically broken producer does not bury every other problem.
MAX_SAMPLE_PROBLEMS_PER_SHARD = 20
MAX_SIZES_BYTES = 256 * 1024 * 1024


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


def _check_shard(ref: ShardRef, name: str, rules: SetRules, max_pixels: int, report: VerifyReport) -> None:
    """One shard through the reader's own checks (:func:`read_shard`), every problem reported."""
    read = read_shard(ref, rules, max_pixels=max_pixels, vouch=False)
    if read.broken is not None and read.count == 0 and not read.integrity and "missing" in read.broken:
        detail = f" ({read.broken})" if loc.is_url(ref.location) else ""  # the URL, status and attempts
        report.problems.append(f"{name}: listed in the manifest but missing{detail}")
        return
    report.problems += read.integrity
    if read.broken is not None:
        report.problems.append(read.broken)
    sample_problems = [reason for _, reason in read.problems]
    report.problems += sample_problems[:MAX_SAMPLE_PROBLEMS_PER_SHARD]
    if len(sample_problems) > MAX_SAMPLE_PROBLEMS_PER_SHARD:
        hidden = len(sample_problems) - MAX_SAMPLE_PROBLEMS_PER_SHARD
        report.problems.append(f"{name}: ... and {hidden} more sample problems")
    report.total += len(read.samples)
    if read.count != ref.count and (read.broken is None or "holds" not in read.broken):
        report.problems.append(f"{name}: read {read.count} samples, the manifest says {ref.count}")


def _check_sizes(directory: str, manifest: dict[str, Any], report: VerifyReport) -> None:
    expected = {entry["name"]: entry["count"] for entry in manifest["shards"]}
    try:
        data = loc.read_optional(loc.join(directory, SIZES), MAX_SIZES_BYTES)
        if data is None:
            report.problems.append(f"{SIZES}: missing")
            return
        sizes = json.loads(data.decode("utf-8"))
    except (ShardError, ValueError) as exc:
        report.problems.append(f"{SIZES}: unreadable or not JSON: {exc}")
        return
    if sizes != expected:
        report.problems.append(f"{SIZES}: {sizes} does not agree with the manifest's counts {expected}")


def _check_strays(directory: str, manifest: dict[str, Any], report: VerifyReport) -> None:
    """Shard files of the set the manifest does not list, and writer temp files (where the store lists)."""
    listed = {entry["name"] for entry in manifest["shards"]}
    pattern = shard_pattern(str(manifest.get("name", "")))
    for entry in loc.list_names(directory) or []:
        if pattern.fullmatch(entry) and entry not in listed:
            report.problems.append(f"{entry}: shard file not listed in the manifest")
        elif entry.startswith(".") and entry.endswith(".tmp"):
            report.problems.append(f"{entry}: leftover temp file from an interrupted writer")


def verify_shard_set(
    directory: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> VerifyReport:
    """Check a shard set (a directory or URL prefix) against its manifest and the format; see VerifyReport.

    Applies exactly the reader's checks (:mod:`synthkit.shards.reader`), reporting every problem instead of
    stopping: the manifest, each listed shard (present, regular file, bytes, sha256, tar structure, sample
    count, every image and metadata, keys unique across the set, one image size and mode), ``sizes.json``,
    and stray shard or temp files where the store can list them. Reads every shard in full: one pass.
    """
    directory = loc.as_location(directory)
    report = VerifyReport()
    try:
        manifest = read_manifest(directory)
    except ShardError as exc:
        report.problems.append(str(exc))
        return report
    if manifest is None:
        report.problems.append(
            f"{loc.join(directory, MANIFEST)}: missing, so the set is not published (or not complete)"
        )
        return report

    shards = manifest["shards"]
    report.shards = len(shards)
    rules = SetRules(manifest.get("image_shape"))
    for entry in shards:
        ref = ShardRef(loc.join(directory, entry["name"]), entry["count"], entry["bytes"], entry["sha256"])
        _check_shard(ref, entry["name"], rules, max_pixels, report)
    _check_sizes(directory, manifest, report)
    _check_strays(directory, manifest, report)
    report.problems.extend(check_tables(directory, manifest))  # shards/tables.py
    return report
