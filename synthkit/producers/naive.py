"""The naive-synthetic baseline as a producer: a frozen generator, another run's or your own.

The first baseline of docs/method.md ("Baselines every comparison needs"): synthetic data from a generator
trained once on the same unlabeled data, not customised for the encoder. ``generator.run`` names a finished
run, whose frozen sampler (verified) serves unguided samples (``Sampler.sampler``: a cGAN's EMA
generator, a diffusion model's unguided DDIM samples); or ``generator.builder`` + ``generator.weights`` name
your own generator (as for the cGAN producer). Every encoder step mixes ``generator.synthetic_ratio`` x B of
its samples in as plain instances. Nothing of the frozen generator trains, and this run publishes nothing of
it (its outputs name it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from synthkit.config import PipelineConfig
from synthkit.errors import RunError
from synthkit.generators.cgan import user_generator
from synthkit.producer_configs.naive import NaiveConfig
from synthkit.producers.base import Chunk, Contribution, Producer, StepInput, TrainContext
from synthkit.provenance import state_dict_hash
from synthkit.run_files.final import load_final
from synthkit.weights import load_state_dict


def _hash_file(path: str) -> str:
    return state_dict_hash(load_state_dict(Path(path)))


def _frozen_user_generator(
    gen: NaiveConfig, channels: int, size: int
) -> Callable[[int, torch.device], torch.Tensor]:
    """The user's generator, frozen: z ~ N(0, I), classes uniform over ``generator.num_classes``."""
    assert gen.builder is not None
    g = user_generator(gen.builder, gen.weights, gen.z_dim, channels, size, gen.num_classes)
    g.eval().requires_grad_(False)

    @torch.no_grad()
    def sample(n: int, device: torch.device) -> torch.Tensor:
        g.to(device)
        c = torch.randint(gen.num_classes, (n,), device=device) if gen.num_classes else None
        return g(torch.randn(n, gen.z_dim, device=device), c)

    return sample


class NaiveProducer(Producer):
    kind: ClassVar[str] = "naive"
    Config: ClassVar[type] = NaiveConfig

    @classmethod
    def for_training(cls, cfg: PipelineConfig, ctx: TrainContext) -> NaiveProducer:

        gen = cfg.generator
        assert isinstance(gen, NaiveConfig)
        self = cls()
        if gen.builder is not None:
            self.sample = _frozen_user_generator(gen, ctx.channels, ctx.size)
            self.identity: dict[str, Any] = {
                "builder": gen.builder,
                "weights": gen.weights,
                "weights_hash": None if gen.weights is None else _hash_file(gen.weights),
            }
        else:
            assert gen.run is not None
            art = load_final(gen.run)
            source = art.sampler
            if source is None:
                raise RunError(
                    f"generator.run={gen.run} holds no generator to sample (trained without HSG and HPG)"
                )
            self.sample = source.sampler(cfg.train.seed)
            self.identity = {"run": str(Path(gen.run).resolve()), "hashes": art.hashes}
        ctx.check_shape(self.sample, "the naive baseline's generator")
        self.n = ctx.per_step(gen.synthetic_ratio)
        return self

    def contribute(self, batch: StepInput) -> Contribution:
        return Contribution([Chunk(self.sample(self.n, batch.images.device), "syn")])

    def publish(self, directory: Path) -> dict[str, Any]:
        # the frozen generator is another run's (or the user's): name it, do not copy it
        return {"kind": self.kind, "hashes": {}, "source": self.identity}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.identity}
