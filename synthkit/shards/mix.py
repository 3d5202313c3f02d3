"""Mixed training stream: several shard sets (e.g. real and synthetic) in set proportions, on any number of
processes and DataLoader workers, with a defined epoch length and a reproducible order.

Why not webdataset's own pipeline: three of its documented behaviours bite exactly this use.
``RandomMix(longest=False)`` stops at the first exhausted source, so a small synthetic set would end the
epoch (and skew the proportions towards its end); node and worker splitting must be configured explicitly or
multi-node raises; and its default decoders unpickle ``pyd``/``pth`` members. Here every source is read
through synthkit's safe reader (never unpickles), every source is *resampled* (an infinite stream whose shard
order is reshuffled on each pass), so the proportions hold for any epoch length, and the split by node and
by worker is done here, explicitly.

**Do not pass this dataset (or a DataLoader over it) through ``accelerator.prepare``.** It already gives each
process (``rank``/``world``) its own disjoint share; ``prepare`` would either re-shard it a second time or
dispatch batches from rank 0, so processes would see a fraction of the data or duplicates. Build the
DataLoader yourself and move batches with ``.to(accelerator.device)``, passing
``rank=accelerator.process_index, world=accelerator.num_processes``.

Splitting. The ``world * num_workers`` (rank, worker) pairs are *slots*, numbered
``rank * num_workers + worker``. An epoch is one sequence of ``n_slots * quota`` positions (``quota =
epoch_samples // n_slots``), and slot ``s`` serves the positions ``s * quota`` to ``(s + 1) * quota - 1``:
contiguous shares, so that a slot reads a few consecutive shards, not all of them. The source of every
position is drawn from one numpy Generator seeded from ``(seed, epoch)`` with probabilities equal to the
normalised weights (the same sequence in every slot), so the realised proportions match the weights in
expectation (binomial spread). Each source is an endless *stream*: pass after pass over its samples, each
pass in a shard order drawn from ``(seed, epoch, source, pass)`` and each shard in its own order. The k-th
position that picked source i, counted over the whole epoch, reads position k of source i's stream; a slot
counts the picks before its share (it draws the sequence up to its end) and starts each stream there, mid
shard if need be. So the slots read consecutive, disjoint stretches of every stream: within one pass over a
finite source every sample is read at most once across all processes and workers, whatever the shard sizes
(unequal shards, the partial last shard synthkit writes), and an epoch that asks for no more of a source
than it holds never repeats one; an epoch longer than that wraps into the next pass, as one process would.
The samples an epoch reads, and their order, do not depend on the number of processes or workers (when
``n_slots`` divides ``epoch_samples``), only which slot reads which. With ``on_error="skip"`` a broken
sample shifts the stretches by one, so neighbouring slots may then share or miss a sample.

A slot that starts inside a shard decodes that shard's earlier samples and drops them: with fewer shards
than slots several slots read the same shards (a warning says so; write sets with at least
``world * num_workers`` shards).

Epoch length. ``epoch_samples`` is the *global* epoch length: every slot yields ``quota`` samples (rounded
down, so up to ``world * num_workers - 1`` samples fewer than asked; ``samples_per_rank`` gives the exact
count), then stops. The same seed, epoch, rank, world and number of workers give the same sequence of keys;
``set_epoch`` changes it. DataLoader workers are copies of the dataset: call ``set_epoch`` before iterating
the loader, and do not use ``persistent_workers=True`` (persistent workers keep the epoch they started with).

Example:
    >>> sources = [parse_mix_spec("real=shards/fmnist-real:0.7"), parse_mix_spec("syn=shards/hard:0.3")]
    >>> stream = MixedShardStream(sources, seed=0, epoch_samples=60_000,  # doctest: +SKIP
    ...                           rank=acc.process_index, world=acc.num_processes)
    >>> loader = DataLoader(stream, batch_size=256, num_workers=4,  # doctest: +SKIP
    ...                     collate_fn=collate_images)
    >>> for epoch in range(epochs):  # doctest: +SKIP
    ...     stream.set_epoch(epoch)
    ...     for images, metas in loader: ...
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from synthkit.shards.format import ShardError
from synthkit.shards.manifest import read_manifest
from synthkit.shards.reader import ON_ERROR, iter_shard

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
# Separate the shard-order random streams from the source-choice stream of the same (seed, epoch).
_ORDER_STREAM = 1
_CHOICE_STREAM = 2
# Source choices are drawn in blocks: one call per sample is slow, one call per epoch can be large.
_CHOICE_BLOCK = 4096


@dataclass(frozen=True)
class MixSource:
    """One shard set in a mix: a ``name`` (reported as ``sample["source"]``), its directory, its weight."""

    name: str
    path: Path
    weight: float


def parse_mix_spec(spec: str) -> MixSource:
    """Parse ``NAME=DIR:WEIGHT`` (e.g. ``real=shards/fmnist-real:0.7``), the form the CLI and configs use.

    The weight is the part after the last colon, so a directory may itself contain colons. Weights need not
    sum to one: MixedShardStream normalises them.

    Raises:
        ValueError: a malformed spec, a name that is not letters/digits/``_``/``-``, a weight that is not a
            finite number above 0, or a directory that does not exist.
    """
    if not isinstance(spec, str):
        raise ValueError(f"mix spec must be a string NAME=DIR:WEIGHT, got {type(spec).__name__}")
    name, eq, rest = spec.partition("=")
    path_text, colon, weight_text = rest.rpartition(":")
    if not eq or not colon or not path_text:
        raise ValueError(
            f"mix spec {spec!r} must look like NAME=DIR:WEIGHT, e.g. real=shards/fmnist-real:0.7"
        )
    if not _NAME.fullmatch(name):
        raise ValueError(f"mix spec {spec!r}: source name {name!r} must be letters, digits, '_' or '-'")
    try:
        weight = float(weight_text)
    except ValueError:
        raise ValueError(f"mix spec {spec!r}: weight {weight_text!r} is not a number") from None
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"mix spec {spec!r}: weight must be a finite number above 0, got {weight_text}")
    path = Path(path_text)
    if not path.is_dir():
        raise ValueError(f"mix spec {spec!r}: {path} is not a directory (a shard set directory is expected)")
    return MixSource(name=name, path=path, weight=weight)


def _shard_list(source: MixSource) -> list[tuple[Path, int]]:
    """The source's shards and their manifest counts; only published sets are mixed."""
    manifest = read_manifest(source.path)
    if manifest is None:
        raise ShardError(
            f"source {source.name!r}: {source.path} has no manifest.json, so it is not a published shard set"
        )
    shards = [(source.path / entry["name"], entry["count"]) for entry in manifest["shards"]]
    if not any(count for _, count in shards):
        raise ShardError(f"source {source.name!r}: {source.path} holds no samples")
    return shards


class MixedShardStream(IterableDataset):
    """Several shard sets mixed with given proportions, resampled, split by rank and worker; see the module.

    Each item is the safe reader's sample (``image`` uint8 HxWxC numpy array, ``meta``, ``cls``, ``__key__``,
    ``__shard__``) plus ``source``, the name of the set it came from, passed through ``transform`` if given.

    Args:
        sources: the sets to mix; names must be unique; weights are normalised to sum to one.
        seed: base of every random draw (shard orders and source choices); a non-negative integer.
        epoch_samples: samples per epoch over all ranks and workers (each slot yields its floor share).
        rank, world: this process's index and the number of processes (``accelerator.process_index``,
            ``accelerator.num_processes``).
        transform: applied to each sample dict (with ``source``) before it is yielded, in the worker.
        on_error: ``"raise"`` (a ShardError naming shard and sample) or ``"skip"``: malformed samples and
            broken shards are never yielded and are recorded in ``skipped``.
    """

    def __init__(
        self,
        sources: Sequence[MixSource],
        *,
        seed: int,
        epoch_samples: int,
        rank: int = 0,
        world: int = 1,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        on_error: str = "raise",
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("a mix needs at least one source")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        for source in sources:
            if not (math.isfinite(source.weight) and source.weight > 0):
                raise ValueError(
                    f"source {source.name!r}: weight must be finite and above 0, got {source.weight}"
                )
        for label, value, low in (
            ("seed", seed, 0),
            ("epoch_samples", epoch_samples, 1),
            ("world", world, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
            raise ValueError(f"rank must be an integer in [0, {world}), got {rank!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        self.sources = list(sources)
        total = sum(s.weight for s in sources)
        self.weights = np.array([s.weight / total for s in sources])
        self.seed, self.epoch_samples, self.rank, self.world = seed, epoch_samples, rank, world
        self.transform = transform
        self.on_error = on_error
        self.epoch = 0
        # Location ("SHARD:KEY" or "SHARD") -> reason, for what this process's iterators skipped. DataLoader
        # workers hold copies, so their skips show up as warnings (one per location), not here.
        self.skipped: dict[str, str] = {}
        self._shards = [_shard_list(s) for s in self.sources]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shard orders and source choices the next iteration draws."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def samples_per_rank(self, num_workers: int = 0) -> int:
        """Samples this rank yields per epoch through a DataLoader with ``num_workers`` (0: in-process)."""
        workers = max(num_workers, 1)
        return self.epoch_samples // (self.world * workers) * workers

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        n_slots = self.world * num_workers
        slot = self.rank * num_workers + worker
        quota = self.epoch_samples // n_slots
        if quota == 0:
            raise ValueError(
                f"epoch_samples={self.epoch_samples} gives each of the {n_slots} (rank, worker) slots "
                "no samples"
            )
        picks, before = self._picks(slot * quota, quota)
        for source, shards in zip(self.sources, self._shards, strict=True):
            if len(shards) < n_slots:
                warnings.warn(
                    f"source {source.name!r} has {len(shards)} shards for {n_slots} (rank, worker) slots: "
                    "slots share shards, and each decodes the samples of its first shard that come before "
                    "its share; write the set with more shards",
                    stacklevel=2,
                )
        streams = [self._source_stream(i, int(before[i])) for i in range(len(self.sources))]
        for pick in picks:
            sample = next(streams[pick])
            sample["source"] = self.sources[pick].name
            yield sample if self.transform is None else self.transform(sample)

    def _picks(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The sources of the epoch's positions ``start .. start + count - 1`` and how many positions before
        ``start`` picked each source (where this slot's share of each source's stream begins).

        The picks are one sequence per (seed, epoch), drawn in fixed blocks, so every slot sees the same
        sequence whatever the number of slots.
        """
        rng = np.random.default_rng([self.seed, self.epoch, _CHOICE_STREAM])
        before = np.zeros(len(self.sources), dtype=np.int64)
        mine: list[np.ndarray] = []
        for block_start in range(0, start + count, _CHOICE_BLOCK):
            block = rng.choice(len(self.sources), size=_CHOICE_BLOCK, p=self.weights)
            head = block[: max(0, start - block_start)]
            before += np.bincount(head, minlength=len(self.sources))
            lo, hi = max(start, block_start), min(start + count, block_start + _CHOICE_BLOCK)
            if lo < hi:
                mine.append(block[lo - block_start : hi - block_start])
        return np.concatenate(mine), before

    def _source_stream(self, index: int, first: int) -> Iterator[dict[str, Any]]:
        """One source's endless stream from its position ``first``; every pass reshuffles the shard order.

        Position j is sample ``j % total`` of pass ``j // total``, in the pass's shard order and each shard's
        own order; a stream that starts inside a shard reads it from its beginning and drops the samples
        before.
        """
        source, shards = self.sources[index], self._shards[index]
        total = sum(count for _, count in shards)
        first_pass, offset = divmod(first, total)
        for pass_index in itertools.count(first_pass):
            order_rng = np.random.default_rng([self.seed, self.epoch, _ORDER_STREAM, index, pass_index])
            kept = 0
            position = 0  # of the pass, by the manifest's counts
            for j in order_rng.permutation(len(shards)):
                path, count = shards[j]
                if position + count <= offset:  # wholly before this stream's start
                    position += count
                    continue
                drop = max(0, offset - position)
                for k, sample in enumerate(self._read_shard(path, count)):
                    if k >= drop:
                        kept += 1
                        yield sample
                position += count
            if kept == 0 and offset == 0:  # would loop forever: every sample of the source is broken
                raise ShardError(
                    f"source {source.name!r} ({source.path}) gave no samples in a full pass"
                    + (f" ({len(self.skipped)} items skipped as broken)" if self.skipped else "")
                )
            offset = 0

    def _read_shard(self, path: Path, expected: int) -> Iterator[dict[str, Any]]:
        """One shard through the safe reader, with the manifest's count checked as iter_samples does."""
        found: list[tuple[str, str]] = []
        count = bad_samples = 0
        broken = False
        for sample in iter_shard(path, on_error=self.on_error, errors=found):
            bad, broke = self._note_skips(found, path)
            bad_samples, broken = bad_samples + bad, broken or broke
            count += 1
            yield sample
        bad, broke = self._note_skips(found, path)
        bad_samples, broken = bad_samples + bad, broken or broke
        count += bad_samples  # undecodable samples are still samples of the shard
        if count != expected and not broken:
            reason = f"{path}: holds {count} samples, the manifest says {expected}"
            if self.on_error == "raise":
                raise ShardError(reason)
            self._note_skips([(str(path), reason)], path)

    def _note_skips(self, found: list[tuple[str, str]], path: Path) -> tuple[int, bool]:
        """Move new skips into ``skipped``; return (samples skipped, whether the shard itself broke).

        A resampled stream meets the same broken item on every pass: it is recorded and warned about once.
        """
        bad_samples = sum(where != str(path) for where, _ in found)
        broken = len(found) > bad_samples
        for where, reason in found:
            if where not in self.skipped:
                self.skipped[where] = reason
                warnings.warn(f"skipped (on_error='skip'): {reason}", stacklevel=2)
        found.clear()
        return bad_samples, broken


def collate_images(samples: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Batch samples into ``(uint8 tensor N x C x H x W, [meta, ...])`` for a DataLoader's ``collate_fn``.

    Images stay uint8 so that workers send a quarter of the bytes float32 would; convert on the device.

    Raises:
        ValueError: the images differ in size or channels (the message names the keys), or no samples.
    """
    if not samples:
        raise ValueError("collate_images needs at least one sample")
    first = samples[0]["image"].shape
    odd = [s for s in samples if s["image"].shape != first]
    if odd:
        raise ValueError(
            f"images in a batch must share one HxWxC shape: {samples[0]['__key__']!r} is {first}, "
            + ", ".join(f"{s['__key__']!r} is {s['image'].shape}" for s in odd[:5])
            + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
        )
    images = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2).contiguous()
    return images, [s["meta"] for s in samples]
