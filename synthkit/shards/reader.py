"""The safe reader: one definition of a valid shard set, applied by every consumer.

Shard content is untrusted input: it is parsed, never executed (webdataset's default decoders unpickle
``pyd``/``pickle`` members and torch-load ``pth`` ones; this reader decodes only images, JSON and decimal
labels). ``shards verify``, ``shards inspect``, the training stream (``train --data``), ``audit`` and
:func:`iter_samples` all read through :func:`read_shard`, so a set one of them refuses is refused by all.

What a valid set is (each check names the shard, and the sample where there is one):

* **the manifest** (:mod:`synthkit.shards.manifest`): well formed, ``total`` equal to the sum of the shard
  counts, every shard listed once and holding at least one sample. Checked before any shard is opened.
* **every shard**: a regular file (or a URL or ``pipe:`` stream; :mod:`synthkit.shards.location`), exactly
  the manifest's byte count (reading stops one byte past it), and the manifest's sha256. A shard is read
  whole and hashed *before* any of its samples is given out, so no sample of a shard that fails its hash
  reaches a consumer; then a strict tar parse (:mod:`synthkit.shards.tar`) and exactly the manifest's count.
* **every sample**: flat ``KEY.EXT`` regular members of decoded extensions only; one image and one ``json``
  member; a key used once in the whole set (not only within its tar, and not again later in the same tar);
  an image within ``max_pixels`` whose decoded data is exactly what its header declares
  (:mod:`synthkit.shards.decode`); one image size and mode per set (the manifest's ``image_shape``, else
  those of the set's first sample, unless the manifest declares ``"mixed"``); metadata that is strict JSON
  (no duplicate keys, finite numbers, valid text) and passes the schema of its kind
  (:func:`synthkit.shards.format.validate_meta`).

With ``on_error="skip"`` a refused sample is dropped and the others kept; a shard that fails a shard-level
check gives out none of its samples when the manifest vouches for it (its bytes cannot be trusted), and
the complete samples before the break when it is a bare tar. Every skip is recorded with the number of
samples it dropped.

Example:
    >>> for sample in iter_samples("shards/hard"):  # doctest: +SKIP
    ...     sample["image"].shape, sample["meta"]["kind"], sample["cls"]
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from synthkit.errors import ShardError
from synthkit.shards import location as loc
from synthkit.shards.decode import (
    DEFAULT_MAX_PIXELS,
    PngHeader,
    check_pixels,
    decode_cls,
    decode_image,
    decode_image_pil,
    decode_json,
    decode_png_batch,
    inflate_exact,
    png_header,
)
from synthkit.shards.format import IMAGE_SHAPE, MANIFEST, MIXED, loads_strict, validate_meta
from synthkit.shards.manifest import read_manifest
from synthkit.shards.tar import (
    DECODED_EXTENSIONS,
    IMAGE_FORMATS,
    Member,
    plain_groups,
    read_members,
    split_member,
)

__all__ = [
    "DECODED_EXTENSIONS",
    "DEFAULT_MAX_MEMBER_BYTES",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_FORMATS",
    "ON_ERROR",
    "SetRules",
    "ShardRead",
    "ShardRef",
    "ShardSet",
    "decode_sample",
    "iter_samples",
    "iter_shard",
    "iter_shard_members",
    "open_set",
    "read_shard",
    "resolve",
]

# Members are read into memory whole; a bound keeps a hostile or corrupt header from exhausting it.
DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024
# A shard without a manifest entry (a bare tar, a pipe) is read whole too, up to this.
DEFAULT_MAX_SHARD_BYTES = 4 * 1024 * 1024 * 1024
# What to do with a malformed sample or shard: stop with a ShardError, or drop it and record why.
ON_ERROR = ("raise", "skip")


@dataclass(frozen=True)
class ShardRef:
    """One shard to read: where, and what its manifest promises (None for a bare tar or a pipe)."""

    location: str
    count: int | None = None
    size: int | None = None
    sha256: str | None = None

    @property
    def vouched(self) -> bool:
        return self.sha256 is not None


@dataclass
class ShardSet:
    """A set's location, manifest (None for bare tars) and shards, in manifest order."""

    location: str
    manifest: dict[str, Any] | None
    shards: list[ShardRef]

    @property
    def total(self) -> int | None:
        return self.manifest["total"] if self.manifest is not None else None

    def rules(self) -> SetRules:
        """The set's rules; bare tars (no manifest) are not held to one image size: nothing declares one."""
        return SetRules(self.manifest.get(IMAGE_SHAPE) if self.manifest is not None else MIXED)


class SetRules:
    """What the samples of one set read so far fix for the rest: keys in use, image size and mode."""

    def __init__(self, declared: Any = None) -> None:
        self.mixed = declared == MIXED
        self.shape: tuple[int, int, int] | None = tuple(declared) if isinstance(declared, list) else None
        self.declared = self.shape is not None
        self.mode: str | None = None
        self.keys: dict[str, str] = {}  # key -> the shard it was first seen in

    def key_problem(self, key: str, shard: str) -> str | None:
        """Why a sample's key cannot be used (None: it can, and is now taken by ``shard``)."""
        first = self.keys.get(key)
        if first is not None:
            return f"key also used in {first}; keys must be unique in a set"
        self.keys[key] = shard
        return None

    def image_problem(self, height: int, width: int, channels: int, mode: str) -> str | None:
        """Why an image does not fit the set (None: it fits); the first image fixes what was not declared."""
        if self.mixed:
            return None
        shape = (height, width, channels)
        if self.shape is None:
            self.shape = shape
        if self.mode is None:
            self.mode = mode
        if shape != self.shape:
            where = "the manifest's image_shape" if self.declared else "the set's first image"
            return (
                f"image is {height}x{width}x{channels}, but {where} is "
                f"{self.shape[0]}x{self.shape[1]}x{self.shape[2]}; one size per set (a set of several "
                f"sizes must declare {IMAGE_SHAPE}: {MIXED!r})"
            )
        if mode != self.mode:
            return f"image mode is {mode}, but the set's first image is {self.mode}; one mode per set"
        return None


@dataclass
class ShardRead:
    """The outcome of reading one shard: the samples it may give out and everything it refused.

    Attributes:
        shard: the shard's location.
        samples: valid samples, in shard order; empty when a vouched shard broke.
        problems: refused samples, as ``("SHARD:KEY", reason)``.
        broken: a shard-level problem (bytes, hash, tar structure, count), or None.
        dropped: samples the broken shard did not give out, beyond those in ``problems``.
        integrity: size and hash problems when read with ``vouch=False`` (verify goes on checking).
    """

    shard: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    broken: str | None = None
    dropped: int = 0
    integrity: list[str] = field(default_factory=list)
    count: int = 0  # samples found in the tar (valid or not)


# --------------------------------------------------------------------------- resolving locations


def _is_set(location: str) -> bool:
    """A set (directory or URL prefix with a manifest) rather than tar shards or a pipe."""
    if loc.is_pipe(location) or "{" in location or location.endswith(".tar"):
        return False
    return loc.is_url(location) or os.path.isdir(location)


def open_set(location: str | os.PathLike[str]) -> ShardSet:
    """The published set at ``location`` (a directory or URL prefix); its manifest is required and checked."""
    where = loc.as_location(location)
    if not loc.is_url(where) and not os.path.isdir(where):
        raise ShardError(f"{where}: not a directory; a shard set is a directory (or URL) with a {MANIFEST}")
    manifest = read_manifest(where)
    if manifest is None:
        raise ShardError(
            f"{where}: no {MANIFEST}, so this is not a published shard set (still being written, or its "
            "writer failed)"
        )
    shards = [
        ShardRef(loc.join(where, e["name"]), e["count"], e["bytes"], e["sha256"]) for e in manifest["shards"]
    ]
    return ShardSet(where, manifest, shards)


def _tar_sets(items: list[str]) -> list[ShardSet]:
    """Tar locations as sets, one per run of tars in one folder: each tar is vouched for by the manifest
    beside it when there is one (and then must be listed in it), and that manifest's image_shape applies."""
    manifests: dict[str, dict[str, Any] | None] = {}
    out: list[ShardSet] = []
    for item in items:
        folder = None if loc.is_pipe(item) else loc.parent(item)
        if folder is not None and folder not in manifests:
            manifests[folder] = read_manifest(folder)
        manifest = manifests.get(folder) if folder is not None else None
        if not out or out[-1].location != folder or out[-1].manifest is not manifest:
            out.append(ShardSet(folder or item, manifest, []))
        if manifest is None:
            out[-1].shards.append(ShardRef(item))
            continue
        entry = next((e for e in manifest["shards"] if e["name"] == loc.basename(item)), None)
        if entry is None:
            raise ShardError(f"{item}: not listed in the {MANIFEST} beside it, so nothing vouches for it")
        out[-1].shards.append(ShardRef(item, entry["count"], entry["bytes"], entry["sha256"]))
    return out


def resolve(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[ShardSet]:
    """Sets to read, in order: each set location becomes its manifest's shards; tar locations, brace
    patterns and ``pipe:`` streams become sets of bare (or beside-manifest) shards, one per folder run."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    out: list[ShardSet] = []
    pending: list[str] = []
    for item in items:
        where = loc.as_location(item)
        if _is_set(where):
            out += _tar_sets(pending)
            pending = []
            out.append(open_set(where))
        else:
            pending += loc.expand(where)
    return out + _tar_sets(pending)


# --------------------------------------------------------------------------- reading one shard


def _fetch(ref: ShardRef, max_shard_bytes: int, read: ShardRead, vouch: bool) -> bytes | None:
    """The shard's bytes once size and hash match the manifest (None and ``read.broken`` set otherwise)."""
    shard = ref.location
    limit = ref.size if ref.size is not None else max_shard_bytes
    what = f"the manifest says {ref.size}" if ref.size is not None else "refused"
    digest = hashlib.sha256() if ref.sha256 is not None else None
    blocks = []
    try:
        for block in loc.iter_blocks(shard, limit, what, size=ref.size):
            if digest is not None:
                digest.update(block)
            blocks.append(block)
    except ShardError as exc:
        read.broken = str(exc)
        return None
    data = b"".join(blocks)
    problems = []
    if ref.size is not None and len(data) != ref.size:
        state = " (truncated)" if len(data) < ref.size else ""
        problems.append(f"{shard}: {len(data)} bytes, the manifest says {ref.size}{state}")
    sha = digest.hexdigest() if digest is not None else None
    if ref.sha256 is not None and sha != ref.sha256:
        problems.append(f"{shard}: sha256 {sha} does not match the manifest's {ref.sha256}")
    if problems and vouch:
        read.broken = "; ".join(problems) + " (tampered, damaged or replaced); none of its samples is used"
        return None
    read.integrity = problems
    return data


def _group(shard: str, data: bytes, members: list[Member], max_member_bytes: int) -> list[tuple[str, Any]]:
    """Members grouped by key as webdataset groups them: [(key, {ext: bytes} or a refusal reason)]."""
    groups: list[tuple[str, Any]] = []
    seen: set[str] = set()
    key: str | None = None
    parts: Any = None
    for member in members:
        name = member[0]
        try:
            member_key, ext = split_member(shard, member, max_member_bytes)
        except ShardError as exc:
            # The sample the member claims to belong to: its name's last component, up to the first dot.
            member_key, ext = re.split(r"[/\\]", name)[-1].partition(".")[0], None
            detail = str(exc).removeprefix(f"{shard}: ")
            reason: str | None = f"{shard}: sample {member_key!r}: {detail}"
        else:
            reason = None
        if member_key != key or key is None:
            if key is not None:
                groups.append((key, parts))
            key, parts = member_key, {}
            if member_key in seen:
                parts = f"{shard}: sample {member_key!r} appears twice (again later in the tar, not adjacent)"
            seen.add(member_key)
        if isinstance(parts, str):
            continue
        if reason is not None:
            parts = reason
        elif ext in parts:
            parts = f"{shard}: member {name!r} appears twice"
        else:
            start, size = member[4], member[3]
            parts[ext] = data[start : start + size]
    if key is not None:
        groups.append((key, parts))
    return groups


def _general_sample(
    shard: str, key: str, parts: dict[str, bytes], rules: SetRules, max_pixels: int
) -> dict[str, Any]:
    """Any member layout (JPEG, WEBP, an odd member set): every check, each refusal named in full."""
    where = f"{shard}: sample {key!r}"
    images = [ext for ext in parts if ext in IMAGE_FORMATS]
    if len(images) != 1:
        found = f"{len(images)} ({', '.join(images)})" if images else "none"
        raise ShardError(f"{where}: needs exactly one image member (png, jpg, jpeg or webp), found {found}")
    if "json" not in parts:
        raise ShardError(f"{where}: has no json metadata member")
    meta = decode_json(f"{where} ({key}.json)", parts["json"])
    schema = validate_meta(meta)
    if schema:
        raise ShardError(f"{where}: metadata does not match the format: {'; '.join(schema)}")
    cls = decode_cls(f"{where} ({key}.cls)", parts["cls"]) if "cls" in parts else None
    ext = images[0]
    image_where = f"{where} ({key}.{ext})"
    if ext == "png":
        header = png_header(image_where, parts["png"])
        check_pixels(image_where, header.width, header.height, max_pixels)
        misfit = rules.image_problem(header.height, header.width, header.channels, header.mode)
        if misfit:
            raise ShardError(f"{image_where}: {misfit}")
        inflate_exact(image_where, header)  # refuses a bomb before Pillow sees it
        image = decode_image_pil(image_where, ext, parts[ext], max_pixels)[0]
    else:
        image, mode = decode_image_pil(image_where, ext, parts[ext], max_pixels)
        misfit = rules.image_problem(image.shape[0], image.shape[1], image.shape[2], mode)
        if misfit:
            raise ShardError(f"{image_where}: {misfit}")
    return {"__key__": key, "__shard__": shard, "image": image, "meta": meta, "cls": cls}


def _common_layout(parts: dict[str, bytes]) -> bool:
    """The layout synthkit writes: ``png`` and ``json``, with or without ``cls``, and nothing else."""
    n = len(parts)
    return "png" in parts and "json" in parts and (n == 2 or (n == 3 and "cls" in parts))


def _strict_meta(shard: str, key: str, text: bytes) -> dict[str, Any]:
    """A sample's metadata by the format's rules (as decode_json and validate_meta), its messages built only
    on a refusal."""
    try:
        meta = loads_strict(text)
    except (ValueError, RecursionError) as exc:
        raise ShardError(f"{shard}: sample {key!r} ({key}.json): invalid JSON metadata: {exc}") from exc
    if meta.__class__ is not dict:
        kind = type(meta).__name__
        raise ShardError(f"{shard}: sample {key!r} ({key}.json): JSON metadata must be an object, got {kind}")
    schema = validate_meta(meta, parsed=True)
    if schema:
        raise ShardError(f"{shard}: sample {key!r}: metadata does not match the format: {'; '.join(schema)}")
    return meta


class _ShardDecoder:
    """Decodes and checks the samples of one shard, in shard order; valid ones go to ``read.samples``,
    refusals to ``read.problems``.

    The common layout (:func:`_common_layout` with an 8-bit gray or RGB PNG) is checked here and its image
    waits in a batch per size, unfiltered in one call at the end
    (:func:`synthkit.shards.decode.decode_png_batch`); every other layout goes through _general_sample.
    The checks are the same either way.
    """

    def __init__(self, read: ShardRead, rules: SetRules, max_pixels: int) -> None:
        self.read = read
        self.shard = read.shard
        self.rules = rules
        self.max_pixels = max_pixels
        self.slots: list[dict[str, Any] | None] = []  # one per sample in shard order; None: refused
        # (width, height, colour type) -> (slot, where, header, inflated data) of the images to unfilter
        self.batches: dict[tuple[int, int, int], list[tuple[int, str, PngHeader, bytes]]] = {}

    def decode(self, groups: list[tuple[str, Any]]) -> None:
        shard, problems = self.shard, self.read.problems
        for key, parts in groups:
            try:
                slot = self._sample(key, parts)
            except ShardError as exc:
                problems.append((f"{shard}:{key}", str(exc)))
                slot = None
            self.slots.append(slot)
        for batch in self.batches.values():
            self._unfilter(batch)
        self.read.samples = [s for s in self.slots if s is not None]
        if self.batches and len(problems) > 1:  # batch refusals were appended after the others: shard order
            order = {key: i for i, (key, _) in enumerate(groups)}
            problems.sort(key=lambda p: order.get(p[0][len(shard) + 1 :], 0))

    def _sample(self, key: str, parts: dict[str, bytes] | str) -> dict[str, Any]:
        """One sample checked; a common-layout image is left to its batch (the slot's ``image`` is None)."""
        shard, rules, max_pixels = self.shard, self.rules, self.max_pixels
        if isinstance(parts, str):  # the grouping refused it already
            raise ShardError(parts)
        taken = rules.key_problem(key, shard)
        if taken:
            raise ShardError(f"{shard}: sample {key!r}: {taken}")
        if not _common_layout(parts):
            return _general_sample(shard, key, parts, rules, max_pixels)
        meta = _strict_meta(shard, key, parts["json"])
        cls = decode_cls(f"{shard}: sample {key!r} ({key}.cls)", parts["cls"]) if len(parts) == 3 else None
        where = f"{shard}: sample {key!r} ({key}.png)"
        header = png_header(where, parts["png"])
        if header.width * header.height > max_pixels or not header.fast:
            check_pixels(where, header.width, header.height, max_pixels)
            return _general_sample(shard, key, parts, rules, max_pixels)
        misfit = rules.image_problem(header.height, header.width, header.channels, header.mode)
        if misfit:
            raise ShardError(f"{where}: {misfit}")
        check_pixels(where, header.width, header.height, max_pixels)
        raw = inflate_exact(where, header)
        batch = self.batches.setdefault((header.width, header.height, header.color), [])
        batch.append((len(self.slots), where, header, raw))
        return {"__key__": key, "__shard__": shard, "image": None, "meta": meta, "cls": cls}

    def _unfilter(self, batch: list[tuple[int, str, PngHeader, bytes]]) -> None:
        """The images of one batch into their slots; where the batch fails, one by one to find which."""
        try:
            images = decode_png_batch([b[1] for b in batch], [b[2] for b in batch], [b[3] for b in batch])
        except ShardError:  # find the one that failed; the others are still good
            for entry in batch:
                self._unfilter_one(*entry)
            return
        for (i, *_), image in zip(batch, images, strict=True):
            self.slots[i]["image"] = image  # type: ignore[index]

    def _unfilter_one(self, i: int, where: str, header: PngHeader, raw: bytes) -> None:
        slot: dict[str, Any] = self.slots[i]  # type: ignore[assignment]
        try:
            slot["image"] = decode_png_batch([where], [header], [raw])[0]
        except ShardError as exc:
            self.read.problems.append((f"{self.shard}:{slot['__key__']}", str(exc)))
            self.slots[i] = None


def _tar_groups(shard: str, data: bytes, max_member_bytes: int) -> tuple[list[tuple[str, Any]], str | None]:
    """The shard's members grouped into samples ([(key, {ext: bytes} or a refusal reason)]) and the tar's
    structural problem (None: none)."""
    groups: list[tuple[str, Any]] | None = plain_groups(data, max_member_bytes)
    if groups is not None:
        return groups, None
    # Anything but the plain layout: parsed again, every rule applied and named.
    members, tar_error = read_members(data)
    return _group(shard, data, members, max_member_bytes), tar_error


def _tar_break(
    shard: str, groups: list[tuple[str, Any]], tar_error: str
) -> tuple[list[tuple[str, Any]], str, int]:
    """A tar that broke: the samples complete before the break, why it is broken, and the samples cut (0, 1).

    The tar broke inside the last sample or right after it; whether a member of it (its cls, say) is
    missing cannot be told, so it is not given out, and is counted as dropped. Where the member the tar
    broke at was refused (a size above the limit, say), that refusal is the reason given.
    """
    if not groups:
        return groups, f"{shard}: corrupt or truncated tar: {tar_error}", 0
    complete, last = groups[:-1], groups[-1][1]
    if isinstance(last, str):
        return complete, last, 1
    after = f" after sample {complete[-1][0]!r}" if complete else ""
    return complete, f"{shard}: corrupt or truncated tar{after}: {tar_error}", 1


def _count_problem(ref: ShardRef, count: int) -> str | None:
    """Why a whole tar's sample count is wrong (None: it is right): none in a vouched shard, or not the
    manifest's count."""
    if count == 0 and ref.vouched:
        return f"{ref.location}: holds no samples (an empty tar)"
    if ref.count is not None and count != ref.count:
        return f"{ref.location}: holds {count} samples, the manifest says {ref.count}"
    return None


def _disown(read: ShardRead, ref: ShardRef) -> None:
    """The manifest vouched for bytes that do not make the shard it describes: give out none of it."""
    read.dropped = max(len(read.samples) + read.dropped, (ref.count or 0) - len(read.problems))
    read.samples = []
    read.broken = f"{read.broken}; none of its samples is used"


def read_shard(
    ref: ShardRef,
    rules: SetRules | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    check_hash: bool = True,
    vouch: bool = True,
) -> ShardRead:
    """Read, check and decode one whole shard; see the module docstring for the checks.

    In steps: the bytes, read whole and checked against the manifest's size and hash (_fetch); the tar's
    members grouped into samples (_tar_groups), a sample cut by a break in the tar set aside (_tar_break);
    every sample decoded and checked (_ShardDecoder); the shard's count checked (_count_problem); and a
    vouched shard that broke disowned whole (_disown).

    Args:
        ref: the shard and what its manifest promises.
        rules: the set's state (keys, image shape); a fresh one checks this shard alone.
        check_hash: compare the sha256 with the manifest's (default). Off only to measure what the check
            costs (``eval/bench_reader.py``): a flipped bit then goes unnoticed.
        vouch: False (``shards verify``) reports size and hash mismatches in ``integrity`` and checks the
            content anyway, so that every problem is listed; consumers keep the default.
    """
    read = ShardRead(ref.location)
    if not check_hash:
        ref = ShardRef(ref.location, ref.count, ref.size, None)
    data = _fetch(ref, max_shard_bytes, read, vouch)
    if data is None:
        read.dropped = ref.count or 0
        return read
    groups, tar_error = _tar_groups(ref.location, data, max_member_bytes)
    if tar_error is not None:
        groups, read.broken, read.dropped = _tar_break(ref.location, groups, tar_error)
    _ShardDecoder(read, rules if rules is not None else SetRules(), max_pixels).decode(groups)
    read.count = len(groups)  # complete samples found (a sample cut by a break is not one)
    if tar_error is None:
        read.broken = _count_problem(ref, len(groups))
    if read.broken is not None and ref.vouched and vouch:
        _disown(read, ref)
    return read


# --------------------------------------------------------------------------- iterating


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")


def _record(errors: list[tuple[str, str]] | None, where: str, reason: str) -> None:
    """Report one skipped item; without a collector a skip must still be visible, so it warns."""
    if errors is None:
        warnings.warn(f"skipped (on_error='skip'): {reason}", stacklevel=4)  # reason names the shard
    else:
        errors.append((where, reason))


def skip_records(read: ShardRead) -> list[tuple[str, str]]:
    """The skips of one shard read, as ``(where, reason)``: refused samples, then the shard itself."""
    records = list(read.problems)
    if read.broken is not None:
        lost = f" ({read.dropped} samples not used)" if read.dropped else ""
        records.append((read.shard, read.broken + lost))
    return records


def raise_first(read: ShardRead) -> None:
    """on_error="raise": the first problem of a shard read, as a ShardError."""
    if read.problems:
        raise ShardError(read.problems[0][1])
    if read.broken is not None:
        raise ShardError(read.broken)


def _iter_set(
    shard_set: ShardSet,
    on_error: str,
    errors: list[tuple[str, str]] | None,
    **options: Any,
) -> Iterator[dict[str, Any]]:
    rules = shard_set.rules()
    for ref in shard_set.shards:
        read = read_shard(ref, rules, **options)
        if on_error == "raise":
            raise_first(read)
        else:
            for where, reason in skip_records(read):
                _record(errors, where, reason)
        yield from read.samples


def iter_samples(
    dir_or_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    on_error: str = "raise",
    errors: list[tuple[str, str]] | None = None,
    check_hash: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield every sample of a shard set (shards in manifest order) or of the given tar shards.

    Each sample is ``{"__key__", "__shard__", "image", "meta", "cls"}`` with ``image`` a uint8 HxWxC array
    (C=1 for grayscale, 3 for colour) and ``cls`` an int or None. By default raises ShardError on anything
    that fails the checks of the module docstring, before any sample of the failing shard is yielded.

    With ``on_error="skip"`` a refused sample is dropped and recorded as ``("SHARD:KEY", reason)``, and a
    shard that fails a shard-level check as ``("SHARD", reason)`` with the number of samples it did not
    give out. Nothing invalid is ever yielded, and nothing is unpickled in either mode. A set without a
    manifest still raises: that is a wrong location or an unpublished set, not damaged data.

    Args:
        dir_or_paths: a set (directory or URL prefix; its manifest is required), a tar path or URL, a brace
            pattern (``set/hard-{000000..000009}.tar``), a ``pipe:COMMAND``, or an iterable of these.
            Tars beside a ``manifest.json`` are checked against it.
        max_pixels: images declaring more pixels are refused before decoding.
        max_member_bytes: larger tar members are refused before being decoded.
        on_error: ``"raise"`` (default) or ``"skip"``.
        errors: with ``on_error="skip"``, skipped items are appended here as ``(where, reason)``; without a
            list, each skip is a warning.
        check_hash: see :func:`read_shard`.
    """
    _check_on_error(on_error)
    options = {"max_pixels": max_pixels, "max_member_bytes": max_member_bytes, "check_hash": check_hash}
    for shard_set in resolve(dir_or_paths):
        yield from _iter_set(shard_set, on_error, errors, **options)


def iter_shard(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    on_error: str = "raise",
    errors: list[tuple[str, str]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream the decoded samples of one tar shard; see iter_samples (also for ``on_error``/``errors``)."""
    _check_on_error(on_error)
    [shard_set] = resolve([loc.as_location(path)]) if not _is_set(loc.as_location(path)) else [None]
    if shard_set is None:
        raise ShardError(f"{path}: a shard set, not one tar shard; use iter_samples")
    yield from _iter_set(
        shard_set, on_error, errors, max_pixels=max_pixels, max_member_bytes=max_member_bytes
    )


def iter_shard_members(
    path: str | os.PathLike[str], *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """One tar shard as (key, {extension: bytes}), grouping consecutive members as webdataset does.

    Only the tar structure and member names are checked (no manifest, no decoding); the first problem raises
    ShardError. A shard must end with the tar end-of-archive block: one cut between two members is reported
    as truncated, not read as shorter.
    """
    shard = loc.as_location(path)
    data = loc.read_bytes(shard, DEFAULT_MAX_SHARD_BYTES)
    members, tar_error = read_members(data)
    groups = _group(shard, data, members, max_member_bytes)
    broken = None
    if tar_error is not None:
        groups, broken, _ = _tar_break(shard, groups, tar_error)
    for key, parts in groups:
        if isinstance(parts, str):
            raise ShardError(parts)
        yield key, parts
    if broken is not None:
        raise ShardError(broken)


def decode_sample(
    shard: str,
    key: str,
    parts: dict[str, bytes],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    validate: bool = False,
) -> dict[str, Any]:
    """Decode the members of one sample (from iter_shard_members) into the sample dict iter_samples yields.

    Every decoding check applies (image size and data, strict JSON, cls); the metadata schema only with
    ``validate`` (random access through a wids index decodes samples of other formats too), and set-level
    rules (unique keys, one image size) never, since a lone sample has no set.
    """
    where = f"{shard}: sample {key!r}"
    images = [ext for ext in parts if ext in IMAGE_FORMATS]
    if len(images) != 1:
        found = f"{len(images)} ({', '.join(images)})" if images else "none"
        raise ShardError(f"{where}: needs exactly one image member (png, jpg, jpeg or webp), found {found}")
    if "json" not in parts:
        raise ShardError(f"{where}: has no json metadata member")
    ext = images[0]
    meta = decode_json(f"{where} ({key}.json)", parts["json"])
    schema = validate_meta(meta) if validate else []
    if schema:
        raise ShardError(f"{where}: metadata does not match the format: {'; '.join(schema)}")
    return {
        "__key__": key,
        "__shard__": shard,
        "image": decode_image(f"{where} ({key}.{ext})", ext, parts[ext], max_pixels)[0],
        "meta": meta,
        "cls": decode_cls(f"{where} ({key}.cls)", parts["cls"]) if "cls" in parts else None,
    }


def sample_count(read: ShardRead) -> int:
    """Samples a shard read accounts for (given out, refused, or dropped with a broken shard)."""
    return len(read.samples) + len(read.problems) + read.dropped
