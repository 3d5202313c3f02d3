"""``synthkit shards convert``: a real image source as a shard set in the synthkit format.

A converted set lets real data travel the same way generated data does: one reader (plain webdataset or
:func:`synthkit.shards.iter_samples`) for real images, hard samples and pairs, e.g. to mix them in training
or to compare them with ``synthkit shards inspect``. Every sample is ``kind: "real"`` and records its
``index`` in the full source split, so it can be traced back to the original image; a labelled source
also gets ``cls``, its true label. The pixels are exactly what :func:`synthkit.data.sources.load_source`
returns for the same :class:`~synthkit.config.DataConfig`, and converting twice gives byte-identical shards.

Example:
    >>> from synthkit.config import DataConfig
    >>> cfg = DataConfig(name="digits", size=8)
    >>> manifest = convert_source(cfg, "test", "shards/digits-test")  # doctest: +SKIP
    >>> manifest["total"]  # doctest: +SKIP
    360
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from synthkit.config import DataConfig, to_dict
from synthkit.data.sources import SPLITS, DataSourceError, load_source, subset_indices
from synthkit.provenance import created_by
from synthkit.shards.format import ShardSetExistsError, is_safe_name
from synthkit.shards.output import SetOutput, open_output
from synthkit.shards.writer import ShardSetWriter

PRODUCER = "convert"
KIND = "real"

#: ``shards convert``'s default side length per source: the size synthkit's own pipelines train it at
#: (``pipelines/*.yaml``; a test keeps the two in step), so a converted set mixes with the run it is for.
#: A source not listed gets ``DataConfig``'s default; ``--pipeline`` takes the size of the run it is for.
TRAINING_SIZES = {"digits": 16, "fashion-mnist": 28, "cifar10": 32, "cifar100": 32, "folder": 28}


def default_name(data_cfg: DataConfig, split: str) -> str:
    """The set name (shard file and sample-key prefix) when none is given: ``SOURCE-SIZEpx-DIGEST-SPLIT``,
    e.g. ``digits-16px-3f2a9c1e-train``.

    The digest is of the data config and split, so two conversions of one source at other sizes, channels or
    subsets never share file names or sample keys (mixed in plain webdataset, ``__key__`` still names one
    image), and the same conversion gets the same name. The split ends the name: Hugging Face's
    ``load_dataset("webdataset", data_dir=SET)`` then reads the shards as that split and leaves the set's
    JSON files alone.
    """
    text = json.dumps({"data": to_dict(data_cfg), "split": split}, sort_keys=True)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{data_cfg.name}-{data_cfg.size}px-{digest}-{split}"


def default_dir(data_cfg: DataConfig, split: str) -> str:
    """The output directory under ``shards/`` when none is given: ``SOURCE-SPLIT`` (readable; the set's
    own name inside it is unique)."""
    return f"{data_cfg.name}-{split}"


def _source_indices(data_cfg: DataConfig, split: str, n: int) -> np.ndarray:
    """Position of each loaded image in the full source split.

    ``data.subset`` keeps a seeded subset of the training split in its original order. To record where each
    image came from we need the size of the full split, so the split is loaded a second time without the
    subset (at the smallest size and one channel, which is cheap), and the subset is drawn by the very
    function the loader uses, so the two cannot disagree.
    """
    if split != "train" or data_cfg.subset is None:
        return np.arange(n)
    probe = dataclasses.replace(data_cfg, subset=None, size=8, channels=1)
    keep = subset_indices(len(load_source(probe, split)), data_cfg)
    if keep is None or len(keep) != n:  # would mean the loader and this module drifted apart
        raise DataSourceError(
            f"{data_cfg.name}: could not map the {n} subset images back to the full {split} split"
        )
    return keep


def convert_source(
    data_cfg: DataConfig,
    split: str,
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    maxcount: int = 1000,
    progress: bool = False,
) -> dict[str, Any]:
    """Write one split of a real source as a shard set in ``out_dir`` and return its manifest.

    Each sample has key ``NAME_INDEX`` (e.g. ``digits-16px-3f2a9c1e-train_00000042``), the image as loaded by
    ``load_source(data_cfg, split)`` (resized to ``data_cfg.size``, converted to ``data_cfg.channels``, and
    restricted to ``data_cfg.subset`` on the training split), metadata
    ``{"kind": "real", "producer": "convert:SOURCE", "index": i, "split": split}`` with ``i`` the position in
    the full split, and ``cls`` when the source has labels.

    Args:
        data_cfg: the source, as in a pipeline's ``data`` section.
        split: ``"train"`` or ``"test"``.
        out_dir: directory of the new set, or an fsspec URL (``s3://bucket/set``: each shard is uploaded
            when complete, the manifest last; :mod:`synthkit.shards.output`); must not already hold a set.
        name: set name, shard file and sample-key prefix (default :func:`default_name`).
        maxcount: most samples per shard.
        progress: show a progress bar.

    Returns:
        The published manifest, whose provenance fields are ``config`` (``data_cfg``), ``producer``
        (``{"name": "convert", "source", "split"}``), ``created_by``, ``seed`` (the subset seed, or null
        when the whole split is converted) and ``classes`` (class names, or null).

    Raises:
        DataSourceError: unknown split, or the source is missing or unreadable.
        ShardSetExistsError: ``out_dir`` already holds a shard set.
        ValueError: an unsafe ``name`` or a ``maxcount`` below 1.
    """
    if split not in SPLITS:
        raise DataSourceError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    name = name or default_name(data_cfg, split)
    if not is_safe_name(name):
        raise ValueError(f"shard set name {name!r} must be letters, digits, '_', '-' or '.', not hidden")
    if isinstance(maxcount, bool) or not isinstance(maxcount, int) or maxcount < 1:
        raise ValueError(f"maxcount must be a positive integer, got {maxcount!r}")
    output = open_output(out_dir)  # a local directory, or a URL: written through a staging directory
    # Loading a large source takes a while; say "there is already a set there" before, not after.
    if output.published_manifest() is not None:
        output.abandon()
        raise ShardSetExistsError(
            f"{output.where} already holds a published shard set; remove it or choose another --out"
        )
    try:
        return _convert(data_cfg, split, output, name, maxcount, progress)
    except BaseException:
        output.abandon()
        raise
    finally:
        output.finish()


def _convert(
    data_cfg: DataConfig, split: str, output: SetOutput, name: str, maxcount: int, progress: bool
) -> dict[str, Any]:

    data = load_source(data_cfg, split)
    indices = _source_indices(data_cfg, split, len(data))
    subset_applies = split == "train" and data_cfg.subset is not None
    fields = {
        "config": to_dict(data_cfg),
        "producer": {"name": PRODUCER, "source": data_cfg.name, "split": split},
        "created_by": created_by(),
        "seed": data_cfg.subset_seed if subset_applies else None,
        "classes": list(data.classes) if data.classes is not None else None,
    }
    producer = f"{PRODUCER}:{data_cfg.name}"
    # N x C x H x W -> N x H x W x C once, as a view; the writer takes one contiguous image at a time.
    images = data.images.permute(0, 2, 3, 1).numpy()
    labels = data.labels.tolist() if data.labels is not None else None
    with ShardSetWriter(
        output.local, name, maxcount=maxcount, manifest_fields=fields, on_publish=output.publish
    ) as writer:
        for i in tqdm(range(len(data)), desc="convert", unit="img", disable=not progress):
            index = int(indices[i])
            meta = {"kind": KIND, "producer": producer, "index": index, "split": split}
            cls = labels[i] if labels is not None else None
            writer.write(f"{name}_{index:08d}", images[i], meta, cls)
    return writer.close()
