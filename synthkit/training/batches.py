"""Which real images each process sees in each epoch.

The permutation depends only on (seed, epoch), so a resumed run sees exactly the batches an
uninterrupted one would; process ``rank`` of ``world`` takes every world-th batch of it, so processes see
disjoint data. We shard here rather than through ``accelerator.prepare(dataloader)`` so the split is
explicit and the data stay in memory as one uint8 tensor.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


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
