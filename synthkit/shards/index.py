"""A wids shard index for a shard set, so the set can also be read by random access (map-style Dataset).

Streaming (MixedShardStream, webdataset) suits training; random access suits evaluation, inspection and
samplers that need ``dataset[i]``. webdataset's random-access reader, ``wids.ShardListDataset``, takes a JSON
index of the shards and their sample counts (the ``wids-shard-index-v1`` layout its ``widsindex create`` tool
writes). A synthkit manifest already holds every count, so the index is written from it without reading a
shard.

Using it with wids (distributed as its own ``wids`` package since webdataset 1.0; not a synthkit dependency):

* Shard ``url``s are file names relative to the index. wids resolves them against the directory of the
  index path it is given (pass the path as a string, not an open file, which has no directory), so the set
  directory can be moved or mounted elsewhere as a whole.
* Caching differs between wids versions: recent ones open local shards in place, earlier ones copy every
  shard, local ones included, into ``cache_dir/<index name>/`` (default ``/tmp/_wids_cache``, or
  ``$WIDS_CACHE``). Pass ``cache_dir`` on a disk with room either way. The default index ``name`` carries a
  digest of the shards' hashes, so two sets that share a name (``hard``, with the same shard file names)
  never share cached copies.
* wids' default transformation decodes like webdataset: it unpickles ``pickle``/``pkl`` and torch-loads
  ``pt``/``pth`` members. For shards you did not make yourself pass ``transformations=[decode_wids_sample]``,
  which decodes with synthkit's safe reader and gives the same sample dicts as ``iter_samples``.

Example:
    >>> path = write_wids_index("shards/cifar10-hard")  # doctest: +SKIP
    >>> import wids  # doctest: +SKIP
    >>> ds = wids.ShardListDataset(str(path), cache_dir="/scratch/wids",  # doctest: +SKIP
    ...                            transformations=[decode_wids_sample])
    >>> ds[123]["image"].shape  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from synthkit.atomic import write_json_atomic
from synthkit.shards.format import ShardError
from synthkit.shards.manifest import read_manifest
from synthkit.shards.reader import DECODED_EXTENSIONS, decode_sample

WIDS_INDEX = "wids-index.json"
WIDS_KIND = "wids-shard-index-v1"
WIDS_VERSION = 1


def wids_index(directory: str | os.PathLike[str], *, name: str | None = None) -> dict[str, Any]:
    """The wids index of a published set as a dict (see write_wids_index)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise ShardError(f"{directory}: no manifest.json, so this is not a published shard set")
    if not manifest["shards"]:
        raise ShardError(f"{directory}: the set has no shards, and wids refuses an empty shard list")
    digest = hashlib.sha256("".join(s["sha256"] for s in manifest["shards"]).encode("ascii")).hexdigest()
    return {
        "__kind__": WIDS_KIND,
        "wids_version": WIDS_VERSION,
        "name": name or f"{manifest['name']}-{digest[:12]}",
        "shardlist": [
            {"url": s["name"], "nsamples": s["count"], "filesize": s["bytes"]} for s in manifest["shards"]
        ],
    }


def write_wids_index(directory: str | os.PathLike[str], *, name: str | None = None) -> Path:
    """Write ``DIR/wids-index.json`` for the published set in ``DIR`` and return its path.

    The index lists every shard of the manifest in manifest order as ``{"url": shard file name, "nsamples",
    "filesize"}``, so wids' global index ``i`` is the ``i``-th sample of ``iter_samples(DIR)``. It is written
    to a hidden temp file and renamed into place, so a reader never sees half an index; rewriting it is
    harmless (sets are immutable once published, so it comes out the same).

    Args:
        directory: a published shard set.
        name: the dataset name wids reports and caches under; default ``SETNAME-HASH12``, with HASH12 the
            first 12 hex digits of a SHA-256 over the shards' hashes.

    Raises:
        ShardError: no manifest, a malformed one, a set without shards, or the file cannot be written.
    """
    index = wids_index(directory, name=name)
    path = Path(directory) / WIDS_INDEX
    write_json_atomic(path, index, indent=2)
    return path


def decode_wids_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """Decode a raw wids sample with synthkit's safe reader: ``{"image", "meta", "cls", "__key__", ...}``.

    wids gives ``{".png": stream or bytes, ".json": ..., "__key__", "__shard__", "__shardindex__", ...}``
    (extensions keep their leading dot; a plain ``"png"`` is accepted too). Members synthkit does not decode
    (e.g. pickles) are refused with a ShardError, as the streaming reader refuses them; the ``__...__``
    entries wids adds are kept.
    """
    shard = str(raw.get("__shard__", "<wids>"))
    key = str(raw.get("__key__", ""))
    parts: dict[str, bytes] = {}
    for field, value in raw.items():
        if field.startswith("__"):
            continue
        ext = field.removeprefix(".")
        if ext not in DECODED_EXTENSIONS:
            raise ShardError(
                f"{shard}: sample {key!r}: member extension {ext!r} is not decoded by synthkit "
                f"(only {', '.join(DECODED_EXTENSIONS)}); pickled or other executable content is refused"
            )
        parts[ext] = value.read() if hasattr(value, "read") else bytes(value)
    sample = decode_sample(shard, key, parts)
    sample.update({k: v for k, v in raw.items() if k.startswith("__") and k not in sample})
    return sample
