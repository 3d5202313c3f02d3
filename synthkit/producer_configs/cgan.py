"""``generator.kind: cgan``: the conditional GAN's section (trainer ``producers/cgan.py``, sampler
``samplers/cgan.py``, networks ``generators/cgan.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from synthkit.config import GeneratorConfig, PipelineConfig, check, choice, streamed_method_data


@dataclass(frozen=True)
class CGanConfig(GeneratorConfig):
    """Conditional GAN: conditional-BN generator, spectral-norm projection discriminator, hinge loss.

    ``pretrain_steps``: G and D train on realism alone for that many steps before the encoder's first
    step (conditions from the initial encoder's k-means; the encoder is untouched). A GAN gets one step per
    encoder step, so a short run's generator would otherwise make blobs for most of the run. With
    ``train.epochs=0`` the run trains the GAN alone, e.g. as the naive baseline's generator.
    ``init_run``: start G (and its EMA), D, and, with HPG, G_a and G_b (G_b perturbed by
    ``hpg.init_noise``) from that finished run's final weights, and its conditions as the starting
    pseudo-classes; the run must have the same ``data`` section and generator shape.

    Your own generator: ``builder`` is an import path ``package.module:function``; it is called as
    ``function(z_dim=..., channels=..., size=..., num_classes=...)`` (the number of conditions, 0 for
    unconditional) and returns an ``nn.Module`` mapping ``(z, c)`` to images in [0, 1]; ``weights`` is a local
    safetensors file of its state (optional: without it the module starts as built). HSG and HPG then
    fine-tune it against synthkit's discriminator, or yours: ``discriminator_builder`` is called as
    ``function(channels=..., size=..., num_classes=...)`` and returns ``D(x, c)`` -> one logit per image,
    started from ``discriminator_weights``. ``g_channels`` (``d_channels``) does not apply to yours.
    """

    kind: str = "cgan"
    z_dim: int = 64
    g_channels: int = 64
    d_channels: int = 64
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)
    ema_decay: float = 0.999
    diffaugment: str = "color,translation,cutout"
    pretrain_steps: int = 0
    init_run: str | None = None
    builder: str | None = None
    weights: str | None = None
    discriminator_builder: str | None = None
    discriminator_weights: str | None = None

    @property
    def steps_before_epochs(self) -> int:
        return self.pretrain_steps

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.pretrain_steps >= 0, "generator.pretrain_steps", "must be >= 0")
        for name in ("z_dim", "g_channels", "d_channels"):
            check(getattr(self, name) > 0, f"generator.{name}", "must be positive")
        check(self.lr_g > 0 and self.lr_d > 0, "generator.lr_g/lr_d", "must be > 0")
        check(0 <= self.ema_decay < 1, "generator.ema_decay", "must be in [0, 1)")
        check(all(0 <= b < 1 for b in self.betas), "generator.betas", f"must be in [0, 1), got {self.betas}")
        for part in filter(None, self.diffaugment.split(",")):
            choice(part.strip(), "generator.diffaugment", ("color", "translation", "cutout"))
        check(
            self.builder is None or (":" in self.builder and all(self.builder.split(":", 1))),
            "generator.builder",
            f"{self.builder!r} is not an import path package.module:function",
        )
        check(
            self.weights is None or self.builder is not None, "generator.weights", "needs generator.builder"
        )
        check(
            self.builder is None or self.init_run is None,
            "generator.init_run",
            "starts synthkit's own cGAN; with generator.builder, give generator.weights instead",
        )

    def check_pipeline(self, cfg: PipelineConfig) -> None:
        """What the cGAN needs of the other sections."""
        active = cfg.hsg.enabled or cfg.hpg.enabled
        if active:
            streamed_method_data(cfg)
        for key in ("pretrain_steps", "init_run"):
            check(
                active or not getattr(self, key),
                f"generator.{key}",
                "starts the cGAN producers; it needs hsg.enabled or hpg.enabled",
            )
        if active:
            # one backward pass carries the encoder's and the generators' losses, stepped by several
            # optimizers: Accelerate's one GradScaler would step (and rescale) once per optimizer
            check(
                cfg.train.mixed_precision != "fp16",
                "train.mixed_precision",
                "fp16 cannot train the cGAN producers (one GradScaler, several optimizers per step); "
                "use bf16 (the GPU setting) or no",
            )
            size = cfg.data.size
            ok = any(size % (2**n) == 0 and size // (2**n) >= 4 for n in (1, 2, 3))
            check(ok, "data.size", f"{size} cannot be built by the cGAN (size = s * 2^n, s >= 4, n in 1..3)")
