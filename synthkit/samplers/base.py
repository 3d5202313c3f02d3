"""The sampler protocol: the frozen generator of a finished run.

Built by ``load`` from a run's ``final/``, its weights verified against the recorded hashes:
``export_kinds`` it can make; ``make(kind, start, count, seed, scorer)``: a chunk of samples with their
per-sample metadata, a pure function of its arguments, so that any process can make any chunk and a killed
export can recompute one; ``export_info`` for the manifest; ``sampler`` for the naive baseline; ``conditions``
(or None) for the preview and the audit.

Pairs are always two consecutive samples, a then b, so ``count`` is even for ``kind="pair"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from synthkit.config import PipelineConfig
    from synthkit.objectives.scoring import Scorer
    from synthkit.samplers.conditions import Conditions

#: What ``make`` can be asked for: hard samples, or positive pairs (a, b, a, b, ...).
EXPORT_KINDS = ("hard", "pair")


@dataclass
class Samples:
    """A chunk made for export: images (floats in [0, 1], N x C x H x W, on the CPU) and, per sample, the
    metadata the sampler knows (condition, pair fields, sampler settings); the export adds the rest."""

    images: torch.Tensor
    meta: list[dict[str, Any]]


class Sampler:
    """Base class with the protocol's defaults; subclasses override what they do."""

    kind: ClassVar[str] = ""
    #: what ``make`` can make, of ``EXPORT_KINDS``
    export_kinds: tuple[str, ...] = ()
    #: the condition ids samples are drawn with (None: unconditional)
    conditions: Conditions | None = None

    @classmethod
    def load(cls, cfg: PipelineConfig, directory: Path, record: dict[str, Any]) -> Sampler:
        """The published sampler of a finished run, its weights verified against ``record["hashes"]``."""
        raise NotImplementedError

    def make(self, kind: str, start: int, count: int, seed: int, scorer: Scorer) -> Samples:
        """``count`` samples of ``kind`` (pairs: ``count`` even, a then b) numbered from ``start``, drawn
        from a generator seeded by (``seed``, ``kind``, ``start``) alone."""
        raise NotImplementedError

    def export_info(self) -> dict[str, Any]:
        """Fields of the manifest's ``producer`` entry (generator step, sampler, ...)."""
        return {}

    def sampler(self, seed: int) -> Callable[[int, torch.device], torch.Tensor]:
        """A frozen sampler for the naive baseline: ``n, device -> n images in [0, 1]``."""
        raise NotImplementedError(f"generator.kind={self.kind} cannot serve as a naive baseline")


def chunk_generator(seed: int, kind: str, start: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The RNG of one export chunk: a function of the set's seed, the kind and the chunk's first index."""
    offset = {"hard": 0, "pair": 7_777_777}.get(kind, 3_333_333)
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + start + offset) % (2**63))


def interleave(x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """a0, b0, a1, b1, ...: the layout of pairs in a chunk and in a shard set."""
    return torch.stack([x_a, x_b], dim=1).flatten(0, 1)
