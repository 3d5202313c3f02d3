"""``generator.kind: naive``: the naive-synthetic baseline's section (trainer ``producers/naive.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from synthkit.config import GeneratorConfig, PipelineConfig, check


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
    builder: str | None = None
    weights: str | None = None
    z_dim: int = 64
    num_classes: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            (self.run is None) != (self.builder is None),
            "generator.run",
            "the naive baseline samples either a finished run (generator.run=RUN) or your own generator "
            "(generator.builder=package.module:function, generator.weights=FILE): give one",
        )
        check(
            self.z_dim >= 1 and self.num_classes >= 0, "generator.z_dim/num_classes", "must be >= 1 and >= 0"
        )
        check(
            0 < self.synthetic_ratio <= 4,
            "generator.synthetic_ratio",
            f"must be in (0, 4], got {self.synthetic_ratio}",
        )

    def check_pipeline(self, cfg: PipelineConfig) -> None:
        check(
            not (cfg.hsg.enabled or cfg.hpg.enabled),
            "generator.kind",
            "naive samples a frozen generator and takes no part in HSG or HPG; set hsg.enabled=false and "
            "hpg.enabled=false",
        )
