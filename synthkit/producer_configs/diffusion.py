"""``generator.kind: diffusion``: the diffusion producers' section (trainer ``producers/diffusion.py``,
sampler ``samplers/diffusion.py``, UNet and schedulers ``generators/diffusion.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from synthkit.config import (
    GeneratorConfig,
    PipelineConfig,
    check,
    check_minima,
    choice,
    streamed_method_data,
)

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
GUIDANCE_SCHEDULES = ("constant", "linear")
BRANCH_MODES = ("noise", "sdedit")


@dataclass(frozen=True)
class DiffusionConfig(GeneratorConfig):
    """The diffusion producers (docs/method.md, "The same two producers with diffusion").

    Model: a (pseudo-)class-conditional diffusers ``UNet2DModel`` (one resolution level per entry of
    ``block_out_channels``; 3 levels suit 16-32 px; ``attention`` adds self-attention at the coarsest level),
    trained for ``train_steps`` with ``DDPMScheduler`` (epsilon prediction) and an ``EMAModel`` copy.
    Sampling: DDIM with ``ddim_steps`` and ``ddim_eta``. HSG (``hsg.enabled``): encoder guidance with scale
    ``guidance_scale`` (x ``hsg.lambda_hard`` and its warm-up/ramp over epochs, shaped over the sampling
    steps by ``guidance_schedule``). HPG (``hpg.enabled``): pairs share noise and trajectory down to
    ``t_split`` (a fraction of the noise levels), which moves from ``t_split_start`` to ``t_split_end`` over
    training; ``branch_mode`` ``noise`` branches with fresh DDIM noise (``branch_eta``), ``sdedit`` re-noises
    the finished x_a. Joint: every ``refresh_every`` epochs a pool of ``pool_size`` images is sampled with
    the current encoder (hard samples and pair members in the proportion of ``hsg.synthetic_ratio`` to
    2 x ``hpg.pair_ratio``), written as a shard set and mixed into training at those ratios.

    A model of your own: ``pretrained`` is a local diffusers directory (a pipeline with ``model_index.json``,
    a bare ``UNet2DModel.save_pretrained`` directory with an optional scheduler config next to it, or
    another synthkit run's ``final/diffusion``); the architecture keys above then come from it.
    ``train_steps: 0`` skips stage 1 (the model samples as it is; a class-conditional model is sampled with
    its own class ids, uniformly); more steps fine-tune it on the real data (a class-conditional model then
    needs as many classes as there are conditions). ``resize``: allow a model of another image size;
    its samples are resized (bilinear) to ``data.size``, and real images to its size for fine-tuning; off,
    a size mismatch is an error.
    """

    READS: ClassVar[dict[str, tuple[str, ...] | None]] = {
        "hsg": ("enabled", "lambda_hard", "warmup_epochs", "ramp_epochs", "synthetic_ratio"),
        "hpg": ("enabled", "pair_ratio", "warmup_epochs"),
    }
    kind: str = "diffusion"
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention: bool = False
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    train_steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-4
    ema_decay: float = 0.999
    ddim_steps: int = 20
    ddim_eta: float = 0.0
    guidance_scale: float = 0.05
    guidance_schedule: str = "constant"
    branch_mode: str = "noise"
    branch_eta: float = 1.0
    t_split_start: float = 0.2
    t_split_end: float = 0.6
    pool_size: int = 512
    refresh_every: int = 2
    sample_batch_size: int = 64
    pretrained: str | None = None
    resize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_model()
        self._check_training()
        self._check_sampling()

    def _check_model(self) -> None:
        """The UNet and its noise schedule."""
        levels = self.block_out_channels
        check(
            len(levels) >= 2 and all(c > 0 for c in levels),
            "generator.block_out_channels",
            "needs >= 2 positive channel counts (one per resolution level)",
        )
        check(
            self.norm_num_groups >= 1 and all(c % self.norm_num_groups == 0 for c in levels),
            "generator.norm_num_groups",
            f"{self.norm_num_groups} must divide every entry of block_out_channels",
        )
        check_minima(self, "generator", {"layers_per_block": 1, "num_train_timesteps": 1})
        choice(self.beta_schedule, "generator.beta_schedule", BETA_SCHEDULES)

    def _check_training(self) -> None:
        """Stage 1 (the model trained, or fine-tuned, on the real data) and the model it starts from."""
        check(
            self.train_steps >= 1 or (self.train_steps == 0 and self.pretrained is not None),
            "generator.train_steps",
            "must be >= 1 (0, no stage 1, needs a pretrained model: generator.pretrained=DIR)",
        )
        check(
            not self.resize or self.pretrained is not None, "generator.resize", "needs generator.pretrained"
        )
        check_minima(self, "generator", {"batch_size": 1})
        check(self.lr > 0, "generator.lr", "must be > 0")
        check(0 <= self.ema_decay < 1, "generator.ema_decay", "must be in [0, 1)")

    def _check_sampling(self) -> None:
        """DDIM, HSG's guidance, HPG's branching and the pools of the joint stage."""
        check_minima(
            self, "generator", {"ddim_steps": 1, "pool_size": 1, "refresh_every": 1, "sample_batch_size": 1}
        )
        check(self.ddim_steps <= self.num_train_timesteps, "generator.ddim_steps", "must be <= timesteps")
        check(
            0 <= self.ddim_eta <= 1 and 0 <= self.branch_eta <= 1,
            "generator.ddim_eta/branch_eta",
            "in [0, 1]",
        )
        for name in ("t_split_start", "t_split_end"):
            value = getattr(self, name)
            check(0 <= value <= 1, f"generator.{name}", f"must be in [0, 1], got {value}")
        check(self.guidance_scale >= 0, "generator.guidance_scale", "must be >= 0")
        choice(self.guidance_schedule, "generator.guidance_schedule", GUIDANCE_SCHEDULES)
        choice(self.branch_mode, "generator.branch_mode", BRANCH_MODES)

    def check_pipeline(self, cfg: PipelineConfig) -> None:
        if cfg.hsg.enabled or cfg.hpg.enabled:
            streamed_method_data(cfg)
