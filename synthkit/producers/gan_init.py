"""``generator.init_run``: a cGAN run that starts from another finished cGAN run's G (EMA), D and conditions.

The finished run is read back as its frozen sampler (``run_files.final.load_final``: weights verified); it
must have trained on the same real data, with generators of the same shape and as many conditions of the
same mode, else the run stops before it starts, in one line naming both sides.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from synthkit.config import PipelineConfig, to_dict
from synthkit.errors import CheckpointError, RunError
from synthkit.producer_configs.cgan import CGanConfig
from synthkit.producers.hard_samples import HardSampleGAN
from synthkit.producers.positive_pairs import GeneratorPair
from synthkit.run_files.final import load_final
from synthkit.samplers.cgan import CGanSampler
from synthkit.samplers.conditions import Conditions

if TYPE_CHECKING:
    from synthkit.data.sources import ImageSet


class GanInit:
    """A finished cGAN run's G (EMA) and D states, conditions and generator step, checked against this run."""

    def __init__(
        self, run: Path, g_state: dict, d_state: dict, conditions: Conditions | None, hashes: dict, steps: int
    ) -> None:
        self.run, self.g_state, self.d_state = run, g_state, d_state
        self.conditions, self.hashes, self.generator_steps = conditions, hashes, steps

    @classmethod
    def load(cls, cfg: PipelineConfig, real: ImageSet | None, n_cond: int) -> GanInit:
        """``cfg.generator.init_run`` for a run on ``real`` (None: streamed) with ``n_cond`` conditions."""
        gen_cfg = cfg.generator
        assert isinstance(gen_cfg, CGanConfig) and gen_cfg.init_run is not None
        run = Path(gen_cfg.init_run)
        art = load_final(run)
        sampler = art.sampler
        if not isinstance(sampler, CGanSampler) or sampler.discriminator is None:
            raise CheckpointError(
                f"generator.init_run={run} holds no cGAN with its discriminator; start from a cGAN run "
                "(hsg.enabled or hpg.enabled, e.g. --train.epochs=0 --generator.pretrain_steps=N)"
            )
        _check_same_data(run, art.cfg, cfg, sampler.conditions, real)
        _check_same_shape(run, art.cfg, cfg, sampler.conditions, n_cond)
        return cls(
            run,
            sampler.main_generator.state_dict(),
            sampler.discriminator.state_dict(),
            sampler.conditions,
            art.hashes,
            sampler.generator_steps,
        )

    def apply(
        self, hsg: HardSampleGAN | None, pairs: GeneratorPair | None, discriminator: nn.Module, seed: int
    ) -> None:
        """Start the generators (and their EMAs; G_b perturbed from G_a by ``seed``) and D from this run."""
        if hsg is not None:
            self._load(hsg.generator, self.g_state, "generator")
            hsg.ema.module.load_state_dict(hsg.generator.state_dict())
        if pairs is not None:
            self._load(pairs.generator_a, self.g_state, "generator")
            pairs.restart_from(self.g_state, seed=seed)
        self._load(discriminator, self.d_state, "discriminator")

    def _load(self, module: nn.Module, state: dict, part: str) -> None:
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            raise RunError(f"the {part} of generator.init_run={self.run} does not fit this run: {e}") from e


def _check_same_data(
    run: Path, src: PipelineConfig, cfg: PipelineConfig, cond: Conditions | None, real: ImageSet | None
) -> None:
    """The run started from trained on the same real images (its data section, wherever they lie now)."""
    same = {k: v for k, v in to_dict(src.data).items() if k != "root"} == {
        k: v for k, v in to_dict(cfg.data).items() if k != "root"
    }
    if not same or (cond is not None and real is not None and len(cond.labels) != len(real)):
        raise RunError(
            f"generator.init_run={run} was trained on other real data ({to_dict(src.data)}); a GAN "
            f"started from it must train on the same images ({to_dict(cfg.data)})"
        )


def _check_same_shape(
    run: Path, src: PipelineConfig, cfg: PipelineConfig, cond: Conditions | None, n_cond: int
) -> None:
    """The run started from has generators of this run's shape and as many conditions of the same mode."""
    sg, gen_cfg = src.generator, cfg.generator
    assert isinstance(sg, CGanConfig) and isinstance(gen_cfg, CGanConfig)
    shape = (sg.z_dim, sg.g_channels, sg.d_channels)
    ours = (gen_cfg.z_dim, gen_cfg.g_channels, gen_cfg.d_channels)
    n_src = cond.num_classes if cond is not None else 0
    if shape != ours or n_src != n_cond or src.conditions.mode != cfg.conditions.mode:
        raise RunError(
            f"generator.init_run={run} has generator (z_dim, g_channels, d_channels) = {shape} with "
            f"{n_src} {src.conditions.mode} conditions; this run needs {ours} with {n_cond} "
            f"{cfg.conditions.mode} conditions"
        )
