"""Which real images each process sees in each epoch.

The permutation depends only on (seed, epoch), so a resumed run sees exactly the batches an
uninterrupted one would; process ``rank`` of ``world`` takes every world-th batch of it, so processes see
disjoint data. We shard here rather than through ``accelerator.prepare(dataloader)`` so the split is
explicit and the data stay in memory as one uint8 tensor.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from synthkit.config import MixConfig
from synthkit.errors import ConfigError, ShardError

# epoch ids of the bounded samples drawn from streamed real data, far from any training epoch
FIT_EPOCH = 3_000_000
REFERENCE_EPOCH = 4_000_000


class EpochBatches:
    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0) -> None:
        self.n, self.batch_size, self.rank, self.world, self.seed = n, batch_size, rank, world, seed

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world)

    def epoch(self, epoch: int) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        for i in range(len(self)):
            start = (i * self.world + self.rank) * self.batch_size
            yield perm[start : start + self.batch_size]


class MemoryBatches(EpochBatches):
    """``EpochBatches`` over an in-memory uint8 image tensor: yields (indices, images)."""

    def __init__(self, images: torch.Tensor, batch_size: int, rank: int, world: int, seed: int) -> None:
        super().__init__(len(images), batch_size, rank, world, seed)
        self.images = images

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # type: ignore[override]
        for idx in super().epoch(epoch):
            yield idx, self.images[idx]


def _with_origin(sample: dict) -> dict:
    """Keep where a sample came from in its metadata, so a batch can name its samples."""
    sample["meta"] = {**sample["meta"], "__source__": sample["source"], "__key__": sample["__key__"]}
    return sample


class MixBatches:
    """Batches of uint8 images streamed from a mix of shard sets (``mix.sources``), for plain CL on a mix.

    The stream splits by process and worker itself (see ``synthkit.shards.mix``), so it is deliberately not
    passed through ``accelerator.prepare``. Every image must have the size and channel count of the first
    sample of the first source; a mismatch is an error naming the sample.
    """

    def __init__(self, mix: MixConfig, batch_size: int, rank: int, world: int, seed: int) -> None:
        from synthkit.shards import iter_samples
        from synthkit.shards.manifest import read_manifest
        from synthkit.shards.mix import MixedShardStream, parse_mix_spec

        try:
            sources = [parse_mix_spec(spec) for spec in mix.sources]
        except ValueError as e:  # a malformed NAME=DIR:WEIGHT or a missing directory
            raise ConfigError(f"--data / mix.sources: {e}") from e
        first = next(iter(iter_samples(sources[0].path)), None)
        if first is None:
            raise ShardError(f"mix source {sources[0].name!r} ({sources[0].path}) holds no samples")
        h, w, c = first["image"].shape
        if h != w:
            raise ShardError(f"mix source {sources[0].name!r}: images must be square, got {h}x{w}")
        self.size, self.channels = h, c
        total = sum((read_manifest(s.path) or {}).get("total", 0) for s in sources)
        self.stream = MixedShardStream(
            sources,
            seed=seed,
            epoch_samples=mix.epoch_samples or total,
            rank=rank,
            world=world,
            on_error=mix.on_error,
            transform=_with_origin,
        )
        self.batch_size, self.num_workers = batch_size, mix.num_workers
        self._per_rank = self.stream.samples_per_rank(mix.num_workers)

    def __len__(self) -> int:
        return self._per_rank // self.batch_size

    @property
    def skipped_in_epoch(self) -> int:
        """Shards and samples skipped (``mix.on_error=skip``) by this process in the epoch last iterated."""
        return self.stream.skip_count - getattr(self, "_skips_before", self.stream.skip_count)

    def epoch(self, epoch: int) -> Iterator[tuple[list[str], torch.Tensor]]:
        from torch.utils.data import DataLoader

        from synthkit.shards.mix import collate_images, iter_batches

        self.stream.set_epoch(epoch)
        self._skips_before = self.stream.skip_count
        loader = DataLoader(
            self.stream,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_images,
            drop_last=True,
        )
        for _, (images, metas) in zip(range(len(self)), iter_batches(loader, self.stream), strict=False):
            if images.shape[1:] != (self.channels, self.size, self.size):
                raise ShardError(
                    f"mix: a batch of {len(metas)} images has shape {tuple(images.shape[1:])}, but the first "
                    f"source's are {(self.channels, self.size, self.size)}; all sets in a mix must match"
                )
            yield [f"{m['__source__']}/{m['__key__']}" for m in metas], images


def sample_images(batches: MemoryBatches | MixBatches, n: int, epoch: int) -> torch.Tensor:
    """Up to ``n`` real images (uint8) from this process's batches of a given ``epoch`` id: a bounded sample
    of streamed data, drawn the same way on every run with the same seed (k-means fits, reference batches).
    ``epoch`` ids far from the training epochs keep it apart from what a training epoch reads."""
    out: list[torch.Tensor] = []
    have = 0
    for _, images in batches.epoch(epoch):
        out.append(images[: n - have])
        have += len(out[-1])
        if have >= n:
            break
    if not out:
        raise ShardError("the real data stream gave no images to sample")
    return torch.cat(out)
