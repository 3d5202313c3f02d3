"""The trainer of a producer that only samples (``samplers/frozen.py``): its samples join every step.

Nothing trains: every encoder step mixes ``generator.synthetic_ratio`` x B samples of the frozen generator
in as plain instances, as the naive baseline does (docs/method.md, "Baselines every comparison needs"). The
run publishes no weights of the generator; it names them (``final.json["producer"]["source"]``), and
``load_final`` loads the sampler back from the config, checking that the weights are still the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthkit.config import PipelineConfig
from synthkit.errors import RunError
from synthkit.producers.base import Chunk, Contribution, Producer, StepInput, TrainContext
from synthkit.registry import PRODUCERS
from synthkit.samplers.frozen import FrozenSampler


class FrozenProducer(Producer):
    """A :class:`FrozenSampler`, sampled every step; built for any ``generator.kind`` registered as one."""

    def __init__(self, frozen: FrozenSampler, seed: int, n: int) -> None:
        self.frozen, self.n = frozen, n
        self.sample = frozen.sampler(seed)
        self.kind = frozen.kind  # type: ignore[misc]

    @classmethod
    def for_training(cls, cfg: PipelineConfig, ctx: TrainContext) -> FrozenProducer:
        sampler_class = PRODUCERS.get(cfg.generator.kind).sampler_class()
        if sampler_class is None or not issubclass(sampler_class, FrozenSampler):
            raise RunError(f"generator.kind={cfg.generator.kind} is not a frozen sampler")
        frozen = sampler_class(cfg.generator, ctx.channels, ctx.size)
        ctx.check_shape(frozen.sampler(cfg.train.seed), f"generator.kind={cfg.generator.kind}")
        return cls(frozen, cfg.train.seed, ctx.per_step(frozen.gen_cfg.synthetic_ratio))

    def contribute(self, batch: StepInput) -> Contribution:
        return Contribution([Chunk(self.sample(self.n, batch.images.device), "syn")])

    def publish(self, directory: Path) -> dict[str, Any]:
        return {"kind": self.kind, "hashes": {}, "source": self.frozen.identity()}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.frozen.identity()}
