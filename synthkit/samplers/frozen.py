"""A producer that only samples: a generator of your own, frozen, as a sampler alone.

Subclass :class:`FrozenSampler` with its ``Config`` (a :class:`FrozenConfig`: the ``generator`` section),
``build`` (the module, from the config) and ``draw`` (``n`` images in [0, 1] from a ``torch.Generator``), and
register the class under a ``generator.kind``: that is all (docs/producers.md has a worked example). synthkit
then trains with it, every encoder step mixing ``generator.synthetic_ratio`` x B of its samples in as plain
instances (the trainer ``producers/frozen.py``, as the naive baseline does), and ``synthkit generate`` writes
its samples, scored for hardness under the run's encoder, as a shard set. Nothing of it trains; the run
publishes no weights of it but names them (``generator.weights`` and its content hash), and loading the
sampler back checks that the file still holds those weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from synthkit.config import GeneratorConfig, PipelineConfig
from synthkit.errors import CheckpointError, ConfigError
from synthkit.provenance import state_dict_hash
from synthkit.samplers.base import Sampler, Samples, chunk_generator
from synthkit.weights import load_into, load_state_dict

if TYPE_CHECKING:
    from synthkit.objectives.scoring import Scorer


@dataclass(frozen=True)
class FrozenConfig(GeneratorConfig):
    """The ``generator`` section of a frozen generator: ``weights`` (a safetensors file of its module's
    state; None: the module as ``build`` makes it) and ``synthetic_ratio`` (B_synthetic / B_real of every
    encoder step, as ``hsg.synthetic_ratio``). It takes no part in HSG or HPG: both must be off."""

    READS: ClassVar[dict[str, tuple[str, ...] | None]] = {"hsg": ("enabled",), "hpg": ("enabled",)}
    STANDALONE: ClassVar[bool] = True
    weights: str | None = None
    synthetic_ratio: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.synthetic_ratio <= 4:
            raise ConfigError(f"generator.synthetic_ratio: must be in (0, 4], got {self.synthetic_ratio}")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ConfigError(f"generator.weights: {self.weights} is not a file")

    def check_pipeline(self, cfg: PipelineConfig) -> None:
        if cfg.hsg.enabled or cfg.hpg.enabled:
            raise ConfigError(
                f"generator.kind: {self.kind} is a frozen generator and takes no part in HSG or HPG; set "
                "hsg.enabled=false and hpg.enabled=false"
            )


class FrozenSampler(Sampler):
    """A frozen generator: a module built from the config, its weights verified, that draws hard samples.

    Subclasses give ``Config``, ``build`` and ``draw``; the rest (loading back, chunks for export, the
    per-step sampler, what the run records) is here.
    """

    Config: ClassVar[type[FrozenConfig]] = FrozenConfig
    export_kinds: tuple[str, ...] = ("hard",)

    def __init__(self, gen_cfg: FrozenConfig, channels: int, size: int, expected_hash: str | None = None):
        self.gen_cfg, self.channels, self.size = gen_cfg, channels, size
        self.module = self.build(gen_cfg, channels, size)
        self.weights_hash: str | None = None
        if gen_cfg.weights is not None:
            path = Path(gen_cfg.weights)
            state = load_state_dict(path, expected_hash)
            load_into(self.module, state, f"generator.weights={path}")
            self.weights_hash = state_dict_hash(state)
        self.module.eval().requires_grad_(False)

    @classmethod
    def build(cls, gen_cfg: FrozenConfig, channels: int, size: int) -> nn.Module:
        """The generator module for ``channels`` x ``size`` x ``size`` images (weights loaded after)."""
        raise NotImplementedError

    def draw(self, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """``n`` images in [0, 1] (N x C x H x W) on ``device``, all randomness from ``generator`` (None: the
        global generator of ``device``)."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What the run records of this generator (``final.json``, ``run.json``, manifests)."""
        return {
            "channels": self.channels,
            "size": self.size,
            "weights": self.gen_cfg.weights,
            "weights_hash": self.weights_hash,
        }

    @classmethod
    def load(cls, cfg: PipelineConfig, directory: Path, record: dict[str, Any]) -> FrozenSampler:
        gen_cfg = cfg.generator
        assert isinstance(gen_cfg, FrozenConfig)
        source = record.get("source")
        if not isinstance(source, dict):
            raise CheckpointError(f"{directory}: the run's record does not name its frozen generator")
        expected = source.get("weights_hash")
        if (gen_cfg.weights is None) != (expected is None):
            raise CheckpointError(f"{directory}: the run's record and config disagree on generator.weights")
        return cls(gen_cfg, int(source["channels"]), int(source["size"]), expected_hash=expected)

    @torch.no_grad()
    def make(self, kind: str, start: int, count: int, seed: int, scorer: Scorer) -> Samples:
        if kind != "hard":
            raise ValueError(f"generator.kind={self.kind} makes hard samples only, not {kind}")
        images = self.draw(count, chunk_generator(seed, kind, start), torch.device("cpu"))
        meta = [{"producer": self.kind, "condition": None} for _ in range(count)]
        return Samples(images.float().cpu(), meta)

    def export_info(self) -> dict[str, Any]:
        return {"generator_step": None, "condition_source": "none", "source": self.identity()}

    def sampler(self, seed: int) -> Callable[[int, torch.device], torch.Tensor]:
        """Draws from the device's global generator (seeded and checkpointed with the run)."""

        @torch.no_grad()
        def sample(n: int, device: torch.device) -> torch.Tensor:
            self.module.to(device)
            return self.draw(n, None, device)

        return sample
