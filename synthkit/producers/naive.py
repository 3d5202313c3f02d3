"""The naive-synthetic baseline as a producer: a frozen generator of another, finished run.

METHOD.md's first baseline: synthetic data from a generator trained once on the same unlabeled data, not
customised for the encoder. ``generator.run`` names the finished run; its published producer (verified)
serves unguided samples (``Producer.sampler``: a cGAN's EMA generator, a diffusion model's unguided DDIM
samples), and every encoder step mixes ``generator.synthetic_ratio`` x B of them in as plain instances.
Nothing of the frozen generator trains, and this run publishes nothing of it (its outputs name its hashes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from synthkit.config import NaiveConfig, PipelineConfig
from synthkit.errors import RunError
from synthkit.producers.base import Chunk, Contribution, Producer, StepInput, TrainContext


class NaiveProducer(Producer):
    kind: ClassVar[str] = "naive"
    Config: ClassVar[type] = NaiveConfig

    @classmethod
    def for_training(cls, cfg: PipelineConfig, ctx: TrainContext) -> NaiveProducer:
        from synthkit.training.artifacts import load_final

        gen = cfg.generator
        assert isinstance(gen, NaiveConfig) and gen.run is not None
        art = load_final(gen.run)
        source = art.producer
        if source is None:
            raise RunError(f"generator.run={gen.run} holds no generator (trained with hsg.enabled=false)")
        probe = source.sampler(cfg.train.seed)(1, ctx.accelerator.device)
        if tuple(probe.shape[1:]) != (ctx.channels, ctx.size, ctx.size):
            shape = "x".join(str(v) for v in probe.shape[1:])
            raise RunError(
                f"generator.run={gen.run} makes {shape} images but the training data are "
                f"{ctx.channels}x{ctx.size}x{ctx.size}"
            )
        self = cls()
        self.source, self.run, self.hashes = source, Path(gen.run), art.hashes
        self.sample = source.sampler(cfg.train.seed)
        b_real = cfg.train.batch_size // ctx.accelerator.num_processes
        self.n = max(1, round(b_real * gen.synthetic_ratio))
        return self

    def contribute(self, batch: StepInput) -> Contribution:
        return Contribution([Chunk(self.sample(self.n, batch.images.device), "syn")])

    def publish(self, directory: Path) -> dict[str, Any]:
        # the frozen generator is another run's: name it, do not copy it
        return {
            "kind": self.kind,
            "hashes": {},
            "source": {"run": str(self.run.resolve()), "hashes": self.hashes},
        }

    @classmethod
    def load(cls, cfg: PipelineConfig, directory: Path, record: dict[str, Any]) -> NaiveProducer:
        self = cls()
        self.record = record
        return self  # exports nothing: export_kinds is empty
