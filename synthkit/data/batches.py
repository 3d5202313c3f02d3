"""Which real images each process sees in each epoch, and where they wait for the step.

The permutation depends only on (seed, epoch), so a resumed run sees exactly the batches an
uninterrupted one would; process ``rank`` of ``world`` takes every world-th batch of it, so processes see
disjoint data. We shard here rather than through ``accelerator.prepare(dataloader)`` so the split is
explicit and the data stay in memory as one uint8 tensor.

Feeding the device. Images stay uint8 until they are on the device, where they become float (a quarter of
the bytes to copy). In-memory data that fit (:func:`fits_on_device`: Fashion-MNIST's 47 MB, CIFAR's
150 MB) are moved to a GPU once and indexed there, so a step copies nothing but a batch's indices (the
epoch's permutation goes over once per epoch); larger data are indexed on the host into page-locked
(pinned) memory and copied with ``non_blocking=True``. On the CPU nothing moves: the same tensors, the
same batches, the same numbers as before. A mix of shard sets is decoded by persistent DataLoader workers
into pinned batches (:class:`MixBatches`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from synthkit.config import MixConfig
from synthkit.errors import ConfigError, ShardError
from synthkit.shards import iter_samples
from synthkit.shards.format import MIXED
from synthkit.shards.mix import MixedShardStream, collate_images, iter_batches, parse_mix_spec
from synthkit.shards.reader import open_set

# epoch ids of the bounded samples drawn from streamed real data, far from any training epoch
FIT_EPOCH = 3_000_000
REFERENCE_EPOCH = 4_000_000
#: in-memory images go to a GPU when they take at most this share of its total memory (and at most half of
#: what is free): 10 GB on an 80 GB card, so Fashion-MNIST, CIFAR and ImageNet-100 at 112 px stay there
DEVICE_DATA_SHARE = 1 / 8

logger = logging.getLogger(__name__)


def fits_on_device(images: torch.Tensor, device: torch.device) -> bool:
    """Whether ``images`` should live on ``device`` for the whole run: a CUDA device with room to spare
    (:data:`DEVICE_DATA_SHARE` of its memory, half of what is free). Never on the CPU (they are there)."""
    if device.type != "cuda":
        return False
    free, total = torch.cuda.mem_get_info(device)
    need = images.numel() * images.element_size()
    return need <= DEVICE_DATA_SHARE * total and need <= free / 2


class EpochBatches:
    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0) -> None:
        self.n, self.batch_size, self.rank, self.world, self.seed = n, batch_size, rank, world, seed

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's order of all ``n`` images (the same on every process)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def spans(self) -> Iterator[slice]:
        """This process's batches as slices of the epoch's permutation."""
        for i in range(len(self)):
            start = (i * self.world + self.rank) * self.batch_size
            yield slice(start, start + self.batch_size)

    def epoch(self, epoch: int) -> Iterator[torch.Tensor]:
        perm = self.permutation(epoch)
        for span in self.spans():
            yield perm[span]


class MemoryBatches(EpochBatches):
    """``EpochBatches`` over an in-memory uint8 image tensor: yields (indices, images).

    ``device``: where the training step runs. A CUDA device the images fit on (:func:`fits_on_device`)
    gets a copy of them once, and each batch is indexed there (``images`` then are on the device); another
    CUDA device gets each batch in pinned host memory, ready for ``.to(device, non_blocking=True)``. The
    indices are always a CPU tensor. ``None`` or a CPU device: batches as slices of ``images``, as ever.
    """

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        device: torch.device | None = None,
    ) -> None:
        super().__init__(len(images), batch_size, rank, world, seed)
        self.images = images
        self.device = torch.device(device) if device is not None else images.device
        self.resident = images.to(self.device) if fits_on_device(images, self.device) else None
        self.pin = self.resident is None and self.device.type == "cuda"

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # type: ignore[override]
        perm = self.permutation(epoch)
        if self.resident is not None:  # one copy of the epoch's order; each batch is indexed on the device
            on_device = perm.to(self.device, non_blocking=True)
            for span in self.spans():
                yield perm[span], self.resident[on_device[span]]
            return
        for span in self.spans():
            idx = perm[span]
            images = self.images[idx]
            yield idx, images.pin_memory() if self.pin else images


def _with_origin(sample: dict) -> dict:
    """Keep where a sample came from in its metadata, so a batch can name its samples."""
    sample["meta"] = {**sample["meta"], "__source__": sample["source"], "__key__": sample["__key__"]}
    return sample


@dataclass(frozen=True)
class MixSet:
    """What the checks found out about one shard set of a mix, before training."""

    name: str
    weight: float
    total: int  # samples, from its manifest
    kind: str  # its first sample's meta ``kind``: "real" (synthkit shards convert), "hard", "pair_a", ...
    shape: tuple[int, int, int]  # H, W, C of its first sample


@dataclass(frozen=True)
class MixInfo:
    """A mix's sets, their common image size and channels, and the epoch length the run will use."""

    sets: tuple[MixSet, ...]
    size: int
    channels: int
    epoch_samples: int
    epoch_rule: str  # how epoch_samples was chosen, in words (for the log)

    @property
    def synthetic(self) -> list[MixSet]:
        return [s for s in self.sets if s.kind != "real"]

    def describe(self) -> str:
        """One line for the log: the sets, their weights, sizes and kinds, and the epoch."""
        sets = ", ".join(f"{s.name} {s.weight:g} ({s.total} {s.kind})" for s in self.sets)
        return f"mix of {sets}; epoch of {self.epoch_samples} samples ({self.epoch_rule})"


def default_epoch_samples(sets: list[MixSet] | tuple[MixSet, ...]) -> tuple[int, str]:
    """The epoch length when ``mix.epoch_samples`` is not set, and why: the mix's real samples (the sets of
    kind ``real``), so that an epoch takes as many steps as a real-only run over them and, drawing each
    real sample with its weight's share, never reads a real sample twice; with no real set, the largest
    set's size."""
    real = sum(s.total for s in sets if s.kind == "real")
    if real:
        return real, "the real sets' samples"
    largest = max(sets, key=lambda s: s.total)
    return largest.total, f"no real set: the largest set's, {largest.name}'s, samples"


def check_mix(mix: MixConfig) -> MixInfo:
    """Read what a mix's sets are before anything is written: their manifests and first samples.

    Raises (one line each, exit status 2 on the command line):
        ConfigError: a malformed spec or a missing directory; sets whose images differ in size or channels
            (named, with their shapes), or are not square.
        ShardError: a set that is not a published set, holds no samples, or whose first shard is unusable.
    """
    try:
        sources = [parse_mix_spec(spec) for spec in mix.sources]
    except ValueError as e:  # a malformed NAME=DIR:WEIGHT or a missing directory
        raise ConfigError(f"--data / mix.sources: {e}") from e
    sets: list[MixSet] = []
    for source in sources:
        try:
            shard_set = open_set(source.path)
        except ShardError as e:
            raise ShardError(f"mix source {source.name!r}: {e}") from e
        if (shard_set.manifest or {}).get("image_shape") == MIXED:
            raise ConfigError(
                f"--data / mix.sources: {source.name!r} ({source.path}) holds images of several sizes; a mix "
                "trains on one size (write the set at one size)"
            )
        first = next(iter(iter_samples(source.path, on_error=mix.on_error, errors=[])), None)
        if first is None or not shard_set.total:
            raise ShardError(f"mix source {source.name!r} ({source.path}) holds no samples")
        h, w, c = (int(d) for d in first["image"].shape)
        if h != w:
            raise ConfigError(f"--data / mix.sources: {source.name!r}: images must be square, got {h}x{w}")
        kind = first["meta"].get("kind")
        sets.append(MixSet(source.name, source.weight, shard_set.total, str(kind), (h, w, c)))
    shapes = {s.shape for s in sets}
    if len(shapes) > 1:
        raise ConfigError(
            "--data / mix.sources: the sets' images differ ("
            + ", ".join(f"{s.name} {s.shape[0]}x{s.shape[1]} px, {s.shape[2]} channel(s)" for s in sets)
            + "); all sets in a mix must match: write them at one size and mode (synthkit shards convert "
            "--size/--channels, synthkit generate from a run trained at that size)"
        )
    epoch_samples, rule = (
        (mix.epoch_samples, "mix.epoch_samples") if mix.epoch_samples else default_epoch_samples(sets)
    )
    h, _, c = sets[0].shape
    return MixInfo(tuple(sets), h, c, epoch_samples, rule)


class MixBatches:
    """Batches of uint8 images streamed from a mix of shard sets (``mix.sources``), for plain CL on a mix
    (and for producers that stream their real data).

    The stream splits by process and worker itself (see ``synthkit.shards.mix``), so it is deliberately not
    passed through ``accelerator.prepare``. Its sets were checked by :func:`check_mix` (one image size and
    channel count); a batch that still differs (a set changed since) is an error naming the shapes.

    Loading: ``mix.num_workers`` DataLoader workers per process decode the shards ahead of the step
    (persistent: started once, not once per epoch; they read each new epoch from the stream's shared
    epoch). Each worker's share of an epoch is a whole number of batches, so a process yields exactly
    ``len(self)`` full batches whatever the number of workers; the batch *order* depends on it (see the
    stream). ``pin_memory``: batches arrive in page-locked memory (for a CUDA device), ready for a
    ``non_blocking`` copy. ``drawn`` counts, per source, the samples of the last epoch read.
    """

    def __init__(
        self,
        mix: MixConfig,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        *,
        info: MixInfo | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.info = info if info is not None else check_mix(mix)
        self.size, self.channels = self.info.size, self.info.channels
        self.stream = MixedShardStream(
            [parse_mix_spec(spec) for spec in mix.sources],
            seed=seed,
            epoch_samples=self.info.epoch_samples,
            batch_size=batch_size,
            rank=rank,
            world=world,
            on_error=mix.on_error,
            transform=_with_origin,
        )
        self.batch_size, self.num_workers, self.pin_memory = batch_size, mix.num_workers, pin_memory
        self._per_rank = self.stream.samples_per_rank()
        self._loader: Any = None  # the persistent DataLoader, made on first use
        self._busy = False  # an epoch is being read from it
        self.drawn: Counter[str] = Counter()

    def __len__(self) -> int:
        return self._per_rank // self.batch_size

    @property
    def skipped_in_epoch(self) -> int:
        """Shards and samples skipped (``mix.on_error=skip``) by this process in the epoch last iterated."""
        return self.stream.skip_count - getattr(self, "_skips_before", self.stream.skip_count)

    def _make_loader(self, stream: Any, persistent: bool) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(
            stream,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_images,
            pin_memory=self.pin_memory,
            persistent_workers=persistent and self.num_workers > 0,
        )

    def epoch(self, epoch: int) -> Iterator[tuple[list[str], torch.Tensor]]:
        """This process's ``len(self)`` batches of ``epoch``: (sample names ``SOURCE/KEY``, uint8 images).

        Raises ShardError: a shard a worker read is unusable (the same one line as without workers), or
        the stream ended before its batches (never, unless the sets changed underneath)."""
        import copy

        stream, nested = self.stream, self._busy
        if nested:  # read while another epoch is being read: a loader (and epoch) of its own
            stream = copy.copy(self.stream)
            stream._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
            loader = self._make_loader(stream, persistent=False)
        else:
            if self._loader is None:
                self._loader = self._make_loader(stream, persistent=True)
            loader, self._busy = self._loader, True
        stream.set_epoch(epoch)
        drawn: Counter[str] = Counter()
        if not nested:
            self.drawn = drawn
            self._skips_before = self.stream.skip_count
        given = 0
        try:
            for images, metas in iter_batches(loader, stream):
                if images.shape[1:] != (self.channels, self.size, self.size):
                    raise ShardError(
                        f"mix: a batch of {len(metas)} images has shape {tuple(images.shape[1:])}, but the "
                        f"sets' are {(self.channels, self.size, self.size)}; all sets in a mix must match"
                    )
                names = [f"{m['__source__']}/{m['__key__']}" for m in metas]
                drawn.update(m["__source__"] for m in metas)
                given += 1
                yield names, images
            if given != len(self):
                raise ShardError(
                    f"mix: this process's stream gave {given} batches of the {len(self)} an epoch needs"
                )
        finally:
            if not nested:
                self._busy = False

    def close(self) -> None:
        """Stop the persistent workers now (they also stop when this object is garbage collected)."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


def sample_images(batches: MemoryBatches | MixBatches, n: int, epoch: int) -> torch.Tensor:
    """Up to ``n`` real images (uint8) from this process's batches of a given ``epoch`` id: a bounded sample
    of streamed data, drawn the same way on every run with the same seed (k-means fits, reference batches).
    ``epoch`` ids far from the training epochs keep it apart from what a training epoch reads."""
    out: list[torch.Tensor] = []
    have = 0
    reader = batches.epoch(epoch)
    try:
        for _, images in reader:
            out.append(images[: n - have])
            have += len(out[-1])
            if have >= n:
                break
    finally:
        reader.close()  # type: ignore[attr-defined]  # a generator: hand the loader back at once
    if not out:
        raise ShardError("the real data stream gave no images to sample")
    return torch.cat(out)


def drawn_record(drawn: Counter[str], sets: tuple[MixSet, ...]) -> dict[str, int]:
    """The epoch record's per-source counts: ``mix_drawn_NAME`` for every set of the mix, in its order."""
    return {f"mix_drawn_{s.name}": int(drawn.get(s.name, 0)) for s in sets}
