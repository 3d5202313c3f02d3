"""Shard-set I/O: write, read (safely) and verify WebDataset tar shard sets (format: ``shards/README.md``)."""

from __future__ import annotations

from synthkit.shards.format import (
    FORMAT,
    KINDS,
    MANIFEST,
    SIZES,
    VERSION,
    ShardError,
    ShardSetExistsError,
    shard_name,
    validate_meta,
)
from synthkit.shards.index import write_wids_index
from synthkit.shards.manifest import read_manifest, sha256_file
from synthkit.shards.mix import MixedShardStream, MixSource, collate_images, parse_mix_spec
from synthkit.shards.reader import (
    decode_sample,
    iter_samples,
    iter_shard,
    iter_shard_members,
    open_set,
    read_shard,
)
from synthkit.shards.verify import VerifyReport, verify_shard_set
from synthkit.shards.writer import ShardSetWriter

__all__ = [
    "FORMAT",
    "KINDS",
    "MixSource",
    "MixedShardStream",
    "MANIFEST",
    "SIZES",
    "VERSION",
    "ShardError",
    "ShardSetExistsError",
    "ShardSetWriter",
    "VerifyReport",
    "collate_images",
    "decode_sample",
    "iter_samples",
    "iter_shard",
    "iter_shard_members",
    "open_set",
    "parse_mix_spec",
    "read_manifest",
    "read_shard",
    "sha256_file",
    "shard_name",
    "validate_meta",
    "verify_shard_set",
    "write_wids_index",
]
