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

Splitting. An epoch is one sequence of positions. Rank ``r`` of ``world`` serves the ``share =
epoch_samples // world`` positions from ``r * share``, rounded down to whole batches of ``batch_size``
(``samples_per_rank``); its DataLoader workers (the (rank, worker) pairs are *slots*) split those batches
into contiguous runs, as even as whole batches allow: with ``nb`` batches and ``W`` workers, worker ``w``
serves ``nb // W`` batches, one more when ``w < nb % W``. Contiguous runs, so that a slot reads a few
consecutive shards, not all of them; whole batches, so that every batch a DataLoader with
``batch_size=batch_size`` collates is full and a rank yields exactly ``samples_per_rank // batch_size``
batches at any number of workers (a DataLoader batches each worker's samples on their own: shares that
were not whole batches used to lose a partial batch per worker). The source of every
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
The samples a rank reads in an epoch do not depend on the number of workers, and with no workers or one
their order is the epoch's own; with ``W`` workers the DataLoader hands out the workers' batches in turn
(worker 0's first, worker 1's first, ...), so the batch order, and hence a run's exact numbers, depend on
``num_workers``. Which samples the whole epoch reads does not depend on the number of processes either
(when ``world * batch_size`` divides ``epoch_samples``). With ``on_error="skip"`` a broken
sample shifts the stretches by one, so neighbouring slots may then share or miss a sample.

A slot that starts inside a shard decodes that shard's earlier samples and drops them: with fewer shards
than slots several slots read the same shards (a warning says so; write sets with at least
``world * num_workers`` shards).

Epoch length. ``epoch_samples`` is the *global* epoch length: every rank yields ``samples_per_rank()``
samples (rounded down to whole batches, so up to ``world * batch_size - 1`` fewer than asked), then stops.
The same seed, epoch, rank, world and number of workers give the same sequence of keys; ``set_epoch``
changes it. The epoch lives in shared memory, so DataLoader workers, persistent ones included
(``persistent_workers=True``), read the epoch set last whenever their iteration (re)starts: call
``set_epoch`` before iterating the loader.

Checks. Every shard goes through the safe reader's checks (:func:`synthkit.shards.reader.read_shard`):
hash before any sample is given out, structure, counts, images, metadata. Keys are checked unique across
everything one slot reads in one pass: with one slot (one process, no workers) that is the whole set; with
several, each slot sees only its shards, so a key repeated in two shards read by different slots is not
seen here (``synthkit shards verify`` and every single-pass reader refuse it).

Example:
    >>> sources = [parse_mix_spec("real=shards/fmnist-real:0.7"), parse_mix_spec("syn=shards/hard:0.3")]
    >>> stream = MixedShardStream(sources, seed=0, epoch_samples=60_000, batch_size=256,  # doctest: +SKIP
    ...                           rank=acc.process_index, world=acc.num_processes)
    >>> loader = DataLoader(stream, batch_size=256, num_workers=4, persistent_workers=True,  # doctest: +SKIP
    ...                     pin_memory=True, collate_fn=collate_images)
    >>> for epoch in range(epochs):  # doctest: +SKIP
    ...     stream.set_epoch(epoch)
    ...     for images, metas in loader: ...
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from synthkit.shards import location as loc
from synthkit.shards.format import ShardError
from synthkit.shards.reader import (
    ON_ERROR,
    SetRules,
    ShardRef,
    open_set,
    raise_first,
    read_shard,
    skip_records,
)

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
# Separate the shard-order random streams from the source-choice stream of the same (seed, epoch).
_ORDER_STREAM = 1
_CHOICE_STREAM = 2
# Source choices are drawn in blocks: one call per sample is slow, one call per epoch can be large.
_CHOICE_BLOCK = 4096
# How often a worker repeats its refusal (more than any batch size): see MixedShardStream.__iter__.
_ERROR_REPEATS = 1 << 16


@dataclass(frozen=True)
class MixSource:
    """One shard set in a mix: a ``name`` (reported as ``sample["source"]``), its location, its weight.

    ``path`` is a local directory (a ``Path``) or a URL prefix (a string, never a ``Path``, which would
    collapse ``http://`` into ``http:/``).
    """

    name: str
    path: Path | str
    weight: float


def parse_mix_spec(spec: str) -> MixSource:
    """Parse ``NAME=DIR:WEIGHT`` (e.g. ``real=shards/fmnist-real:0.7``), the form the CLI and configs use.

    ``DIR`` may be a URL (``real=s3://bucket/fmnist-real:0.7``, ``syn=http://host:8000/hard:0.3``): the
    weight is the part after the last colon, so a location may itself contain colons. Weights need not
    sum to one: MixedShardStream normalises them. A URL is checked when the stream opens its manifest.

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
    if loc.is_url(path_text):
        if loc.is_pipe(path_text):
            raise ValueError(f"mix spec {spec!r}: a pipe: stream has no manifest; give the set's location")
        return MixSource(name=name, path=path_text, weight=weight)
    path = Path(path_text)
    if not path.is_dir():
        raise ValueError(f"mix spec {spec!r}: {path} is not a directory (a shard set directory is expected)")
    return MixSource(name=name, path=path, weight=weight)


def _shard_list(source: MixSource) -> tuple[list[ShardRef], Any]:
    """The source's shards (with what its manifest promises) and image declaration; published sets only."""
    try:
        shard_set = open_set(source.path)
    except ShardError as exc:
        raise ShardError(f"source {source.name!r}: {exc}") from exc
    if not shard_set.total:
        raise ShardError(f"source {source.name!r}: {source.path} holds no samples")
    return shard_set.shards, shard_set.manifest.get("image_shape") if shard_set.manifest else None


class WorkerError:
    """A refusal inside a DataLoader worker, carried to the main process as an item instead of an exception.

    DataLoader re-raises a worker's exception as a multi-line "Caught ShardError in DataLoader worker
    process 0 ... Original Traceback" message; passed as data, the refusal comes out as the same one-line
    ShardError as without workers (:func:`iter_batches`).
    """

    def __init__(self, message: str, skipped: list[tuple[str, str]]) -> None:
        self.message, self.skipped = message, skipped


class Batch(tuple):
    """``(images, metas)`` from :func:`collate_images`, with ``skipped``: the skips recorded in the worker
    while reading the batch's samples, as ``(where, reason)``."""

    skipped: list[tuple[str, str]]

    def pin_memory(self) -> Batch:
        """The batch with its images in page-locked memory (a DataLoader with ``pin_memory=True`` calls
        this), so that ``.to(device, non_blocking=True)`` copies them without blocking; metas as they are."""
        pinned = Batch((self[0].pin_memory(), self[1]))
        pinned.skipped = self.skipped
        return pinned


def _check_sources(sources: Sequence[MixSource]) -> None:
    """At least one source, unique names, finite positive weights."""
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_draws(*, seed: Any, epoch_samples: Any, batch_size: Any, rank: Any, world: Any) -> None:
    """The integers of a mix: each at least its lower bound, ``rank`` in ``[0, world)``."""
    lows = (
        ("seed", seed, 0),
        ("epoch_samples", epoch_samples, 1),
        ("batch_size", batch_size, 1),
        ("world", world, 1),
    )
    for label, value, low in lows:
        if not _is_int(value) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
    if not _is_int(rank) or not 0 <= rank < world:
        raise ValueError(f"rank must be an integer in [0, {world}), got {rank!r}")


class MixedShardStream(IterableDataset):
    """Several shard sets mixed with given proportions, resampled, split by rank and worker; see the module.

    Each item is the safe reader's sample (``image`` uint8 HxWxC numpy array, ``meta``, ``cls``, ``__key__``,
    ``__shard__``) plus ``source``, the name of the set it came from, passed through ``transform`` if given.

    Args:
        sources: the sets to mix; names must be unique; weights are normalised to sum to one.
        seed: base of every random draw (shard orders and source choices); a non-negative integer.
        epoch_samples: samples per epoch over all ranks and workers (each rank yields its floor share in
            whole batches).
        batch_size: the DataLoader's batch size: each worker's share is a whole number of batches, so
            every batch is full and the batch count does not depend on the number of workers (default 1:
            shares of single samples).
        rank, world: this process's index and the number of processes (``accelerator.process_index``,
            ``accelerator.num_processes``).
        transform: applied to each sample dict (with ``source``) before it is yielded, in the worker.
        on_error: ``"raise"`` (a ShardError naming shard and sample) or ``"skip"``: malformed samples and
            broken shards are never yielded and are recorded in ``skipped``.
        check_hash: compare each shard's sha256 with its manifest (default); off only to measure what the
            check costs (``eval/bench_reader.py``).
    """

    def __init__(
        self,
        sources: Sequence[MixSource],
        *,
        seed: int,
        epoch_samples: int,
        batch_size: int = 1,
        rank: int = 0,
        world: int = 1,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        on_error: str = "raise",
        check_hash: bool = True,
    ) -> None:
        super().__init__()
        _check_sources(sources)
        _check_draws(seed=seed, epoch_samples=epoch_samples, batch_size=batch_size, rank=rank, world=world)
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        self.sources = list(sources)
        total = sum(s.weight for s in sources)
        self.weights = np.array([s.weight / total for s in sources])
        self.seed, self.epoch_samples, self.rank, self.world = seed, epoch_samples, rank, world
        self.batch_size = batch_size
        self.transform = transform
        self.on_error = on_error
        self.check_hash = check_hash
        # the epoch, in shared memory: a DataLoader's workers (persistent ones too) see every set_epoch
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        # Location ("SHARD:KEY" or "SHARD") -> reason, for what this process's iterators skipped. DataLoader
        # workers hold copies, so their skips show up as warnings (one per location), not here.
        self.skipped: dict[str, str] = {}
        self.skip_count = 0  # every skip met, a shard or sample met again on a later pass counted again
        self._pending: list[tuple[str, str]] = []  # skips not yet handed to a sample (in a worker)
        listed = [_shard_list(s) for s in self.sources]
        self._shards = [shards for shards, _ in listed]
        self._declared = [declared for _, declared in listed]

    @property
    def epoch(self) -> int:
        """The epoch the next iteration draws (set with :meth:`set_epoch`)."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shard orders and source choices the next iteration draws; DataLoader
        workers, persistent ones included, read it when their iteration starts."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._epoch.fill_(epoch)

    def samples_per_rank(self, num_workers: int = 0) -> int:
        """Samples this rank yields per epoch: its share of ``epoch_samples`` in whole batches, the same
        through a DataLoader with any number of workers (``num_workers`` is accepted for older callers)."""
        return self.epoch_samples // self.world // self.batch_size * self.batch_size

    def _slot_span(self, worker: int, num_workers: int) -> tuple[int, int]:
        """The epoch positions ``(start, count)`` that ``worker`` of this rank serves: a contiguous run of
        whole batches of the rank's share, the runs as even as whole batches allow."""
        batches = self.samples_per_rank() // self.batch_size
        base, extra = divmod(batches, num_workers)
        before = worker * base + min(worker, extra)
        start = self.rank * (self.epoch_samples // self.world) + before * self.batch_size
        return start, (base + (worker < extra)) * self.batch_size

    def __iter__(self) -> Iterator[Any]:
        if get_worker_info() is None:
            yield from self._iter()
            return
        try:
            for sample in self._iter():
                if self._pending:
                    sample["__skipped__"], self._pending = self._pending, []
                yield sample
        except ShardError as exc:
            error = WorkerError(str(exc), self._pending)
            # Repeated, so that it fills a whole batch: a DataLoader with drop_last=True would drop a short
            # batch holding it, and the refusal with it. The main process stops at the first one.
            for _ in range(_ERROR_REPEATS):
                yield error

    def _iter(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        n_slots = self.world * num_workers
        if self.samples_per_rank() == 0:
            raise ValueError(
                f"epoch_samples={self.epoch_samples} gives each of the {self.world} processes no samples "
                f"(less than one batch of {self.batch_size})"
            )
        start, count = self._slot_span(worker, num_workers)
        if count == 0:  # more workers than this rank has batches: this one has none
            return
        epoch = self.epoch  # read once: a set_epoch during this iteration changes the next one
        picks, before = self._picks(start, count, epoch)
        for source, shards in zip(self.sources, self._shards, strict=True):
            if len(shards) < n_slots:
                warnings.warn(
                    f"source {source.name!r} has {len(shards)} shards for {n_slots} (rank, worker) slots: "
                    "slots share shards, and each decodes the samples of its first shard that come before "
                    "its share; write the set with more shards",
                    stacklevel=2,
                )
        streams = [self._source_stream(i, int(before[i]), epoch) for i in range(len(self.sources))]
        nexts = [stream.__next__ for stream in streams]
        names = [source.name for source in self.sources]
        transform = self.transform
        for pick in picks.tolist():  # Python ints: list indexing by numpy scalars costs more per sample
            sample = nexts[pick]()
            sample["source"] = names[pick]
            yield sample if transform is None else transform(sample)

    def _picks(self, start: int, count: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The sources of the epoch's positions ``start .. start + count - 1`` and how many positions before
        ``start`` picked each source (where this slot's share of each source's stream begins).

        The picks are one sequence per (seed, epoch), drawn in fixed blocks, so every slot sees the same
        sequence whatever the number of slots.
        """
        rng = np.random.default_rng([self.seed, epoch, _CHOICE_STREAM])
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

    def _source_stream(self, index: int, first: int, epoch: int) -> Iterator[dict[str, Any]]:
        """One source's endless stream from its position ``first``; every pass reshuffles the shard order.

        Position j is sample ``j % total`` of pass ``j // total``, in the pass's shard order and each shard's
        own order; a stream that starts inside a shard reads it from its beginning and drops the samples
        before.
        """
        source, shards = self.sources[index], self._shards[index]
        total = sum(ref.count or 0 for ref in shards)
        first_pass, offset = divmod(first, total)
        rules = SetRules(self._declared[index])  # the set's image size and mode, fixed across passes
        for pass_index in itertools.count(first_pass):
            rules.keys = {}  # each pass reads every key again (resampling), once
            order_rng = np.random.default_rng([self.seed, epoch, _ORDER_STREAM, index, pass_index])
            kept = 0
            position = 0  # of the pass, by the manifest's counts
            for j in order_rng.permutation(len(shards)):
                count = shards[j].count or 0
                if position + count <= offset:  # wholly before this stream's start
                    position += count
                    continue
                for sample in self._read_shard(shards[j], rules)[max(0, offset - position) :]:
                    kept += 1
                    yield sample
                position += count
            if kept == 0 and offset == 0:  # would loop forever: every sample of the source is broken
                raise ShardError(
                    f"source {source.name!r} ({source.path}) gave no samples in a full pass"
                    + (f" ({len(self.skipped)} items skipped as broken)" if self.skipped else "")
                )
            offset = 0

    def _read_shard(self, ref: ShardRef, rules: SetRules) -> list[dict[str, Any]]:
        """One shard through the safe reader's checks (:func:`synthkit.shards.reader.read_shard`)."""
        read = read_shard(ref, rules, check_hash=self.check_hash)
        if self.on_error == "raise":
            raise_first(read)
        for where, reason in skip_records(read):
            self.note_skip(where, reason)
        return read.samples

    def note_skip(self, where: str, reason: str) -> None:
        """Record one skip in ``skipped`` and count it in ``skip_count`` (and pass it on from a worker); a
        resampled stream meets the same broken item on every pass: it is counted each time, and recorded
        and warned about once."""
        self.skip_count += 1
        if get_worker_info() is not None:
            self._pending.append((where, reason))
        if where in self.skipped:
            return
        self.skipped[where] = reason
        warnings.warn(f"skipped (on_error='skip'): {reason}", stacklevel=2)


def iter_batches(loader: Iterable[Any], stream: MixedShardStream) -> Iterator[Batch]:
    """The batches of a DataLoader over ``stream``, with refusals and skips from workers handled here: a
    worker's ShardError is raised as the same one-line ShardError, its skips are recorded in
    ``stream.skipped`` of the main process."""
    for batch in loader:
        for where, reason in getattr(batch, "skipped", ()):
            stream.skip_count += 1
            if where not in stream.skipped:  # a worker's warning stays in the worker: say it here
                stream.skipped[where] = reason
                warnings.warn(f"skipped (on_error='skip', in a DataLoader worker): {reason}", stacklevel=2)
        if isinstance(batch, WorkerError):
            raise ShardError(batch.message)
        yield batch


def collate_images(samples: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Batch samples into ``(uint8 tensor N x C x H x W, [meta, ...])`` for a DataLoader's ``collate_fn``.

    Images stay uint8 so that workers send a quarter of the bytes float32 would; convert on the device.

    Raises:
        ValueError: the images differ in size or channels (the message names the keys), or no samples.
    """
    skipped: list[tuple[str, str]] = []
    images_list, metas = [], []
    for s in samples:
        if s.__class__ is not dict:
            if isinstance(s, WorkerError):
                return s  # type: ignore[return-value]  # iter_batches raises it in the main process
        elif "__skipped__" in s:
            skipped += s.pop("__skipped__")
        images_list.append(s["image"])
        metas.append(s["meta"])
    if not samples:
        raise ValueError("collate_images needs at least one sample")
    first = images_list[0].shape
    if any(im.shape != first for im in images_list):
        odd = [s for s in samples if s["image"].shape != first]
        raise ValueError(
            f"images in a batch must share one HxWxC shape: {samples[0]['__key__']!r} is {first}, "
            + ", ".join(f"{s['__key__']!r} is {s['image'].shape}" for s in odd[:5])
            + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
        )
    images = torch.from_numpy(np.stack(images_list)).permute(0, 3, 1, 2).contiguous()
    batch = Batch((images, metas))
    batch.skipped = skipped
    return batch
