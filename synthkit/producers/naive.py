"""The naive-synthetic baseline as a producer: a frozen generator of another, finished run.

METHOD.md's first baseline: synthetic data from a generator trained once on the same unlabeled data, not
customised for the encoder. ``generator.run`` names the finished run; its published producer (verified)
serves unguided samples (``Producer.sampler``: a cGAN's EMA generator, a diffusion model's unguided DDIM
samples), and every encoder step mixes ``generator.synthetic_ratio`` x B of them in as plain instances.
Nothing of the frozen generator trains, and this run publishes nothing of it (its outputs name its hashes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from synthkit.config import GeneratorConfig, PipelineConfig
from synthkit.errors import ConfigError, RunError
from synthkit.producers.base import Chunk, Contribution, Producer, StepInput, TrainContext


@dataclass(frozen=True)
class NaiveConfig(GeneratorConfig):
    """``generator.kind: naive``: the naive-synthetic baseline's section.

    ``run`` is a finished run directory whose producer is frozen and sampled every step without guidance
    (for a cGAN run: its EMA generator, conditions drawn from its final condition frequencies; for a
    diffusion run: unguided DDIM samples); ``synthetic_ratio`` is B_synthetic / B_real, as
    ``hsg.synthetic_ratio``. The baseline takes no part in HSG or HPG, so both must be off. Train such a
    generator with realism alone, e.g. ``--hsg.lambda_hard=0 --hsg.warmup_epochs=<epochs>`` (the encoder of
    that run never sees its samples), from the same ``generator.init_run`` as the method's runs when they
    start from a pre-trained GAN.
    """

    READS: ClassVar[dict[str, tuple[str, ...] | None]] = {"hsg": ("enabled",), "hpg": ("enabled",)}
    STANDALONE: ClassVar[bool] = True
    kind: str = "naive"
    run: str | None = None
    synthetic_ratio: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.run is None:
            raise ConfigError("generator.run: the naive baseline needs a finished run to sample")
        if not 0 < self.synthetic_ratio <= 4:
            raise ConfigError(f"generator.synthetic_ratio: must be in (0, 4], got {self.synthetic_ratio}")

    def check_pipeline(self, cfg: PipelineConfig) -> None:
        if cfg.hsg.enabled or cfg.hpg.enabled:
            raise ConfigError(
                "generator.kind: naive samples a frozen generator and takes no part in HSG or HPG; set "
                "hsg.enabled=false and hpg.enabled=false"
            )


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
