"""Where a sample lands in a set: a set cut into parts at shard boundaries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count`` of a set: its shards ``first_shard .. first_shard + shards - 1``.

    A set of ``total`` samples in shards of ``maxcount`` is cut into parts at shard boundaries (``Part.of``),
    so that shard k holds samples ``k * maxcount ..`` whichever part (process, array job) writes it, and the
    parts together are byte for byte the set one writer would write. ``shards/parts.py`` publishes them.
    """

    index: int
    count: int
    first_shard: int
    shards: int

    @classmethod
    def of(cls, total: int, maxcount: int, index: int, count: int) -> Part:
        """Part ``index`` of ``count`` of a set of ``total`` samples in shards of ``maxcount``: contiguous
        runs of whole shards, as even as shard counts allow (a part may be empty)."""
        if not 0 <= index < count:
            raise ValueError(f"part {index}/{count}: the index must be in [0, {count})")
        n_shards = -(-total // maxcount)
        first, end = index * n_shards // count, (index + 1) * n_shards // count
        return cls(index, count, first, end - first)

    def samples(self, total: int, maxcount: int) -> range:
        """The global indices of this part's samples."""
        return range(self.first_shard * maxcount, min(total, (self.first_shard + self.shards) * maxcount))

    def shard_indices(self) -> range:
        """The set-wide indices of this part's shards."""
        return range(self.first_shard, self.first_shard + self.shards)

    def describe(self) -> dict[str, int]:
        return {
            "index": self.index,
            "count": self.count,
            "first_shard": self.first_shard,
            "shards": self.shards,
        }
