"""The cGAN producer: HSG's hard-sample generator and HPG's pair of generators, with one discriminator.

Wu et al., "Synthetic Data Can Also Teach", AAAI 2023, in our formulation (docs/method.md, "HSG with a
conditional GAN"): one joint step is (a) one D step on real vs every generator's samples, (b) each generator's
realism term with D frozen, (c) with HPG, the pair-similarity term of G_a and G_b under the fixed encoder, and
(d) the encoder's pass over real, hard and pair views (``training/steps.py``), whose backward pass also
carries (b) and (c) and, through a gradient reversal scaled by lambda_hard, trains the HSG generator to
increase the encoder's loss. This module does (a)-(c) and hands (d) its chunks; the pieces are in
``hard_samples.py`` (G, D, EMA, losses), ``positive_pairs.py`` (the pair, its target schedule) and
``adversary.py`` (D's step and the realism terms).

Conditions are k-means pseudo-classes of the real images, refreshed every ``conditions.refresh_every``
epochs (or true labels, or none; ``conditions.py``). ``generator.pretrain_steps`` trains G and D on realism
alone before the encoder's first step (``gan_pretrain.py``); ``generator.init_run`` starts G, D and the
conditions from another finished cGAN run (``gan_init.py``).
Published: the EMA generators (``generator_ema``; ``generator_a_ema``/``generator_b_ema`` with HPG), the
discriminator and the conditions, written by the frozen sampler they are read back as (``samplers/cgan.py``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from synthkit.config import PipelineConfig
from synthkit.errors import CheckpointError
from synthkit.generators.cgan import Generator, build_cgan, build_generator
from synthkit.producer_configs.cgan import CGanConfig
from synthkit.producers.adversary import Adversary
from synthkit.producers.base import Chunk, Contribution, Producer, StepInput, TrainContext
from synthkit.producers.conditions import RunConditions, num_conditions
from synthkit.producers.gan_init import GanInit
from synthkit.producers.gan_pretrain import GanPretraining
from synthkit.producers.hard_samples import HardSampleGAN, grad_reverse, hsg_lambda
from synthkit.producers.positive_pairs import (
    AdaptiveTarget,
    GeneratorPair,
    real_positive_similarity,
    schedule_progress,
    target_similarity,
)
from synthkit.provenance import state_dict_hash
from synthkit.samplers.cgan import CGanSampler, generator_meta
from synthkit.samplers.conditions import Conditions, load_conditions, save_conditions
from synthkit.weights import load_into, load_state_dict, save_state_dict

if TYPE_CHECKING:
    from accelerate import Accelerator

STATE_JSON = "producer_state.json"

logger = logging.getLogger(__name__)


def _weights_hash(path: str | None) -> str | None:
    return None if path is None else state_dict_hash(load_state_dict(Path(path)))


def build_gan(
    cfg: PipelineConfig, channels: int, size: int, num_classes: int, load_weights: bool = True
) -> tuple[HardSampleGAN | None, GeneratorPair | None, nn.Module]:
    """HSG's modules (G, its EMA, D), HPG's pair, and the one D that judges every generator: HSG's when it
    runs, else the pair's own. The generators skip their per-forward check of condition ids (drawn in range
    by construction: no host sync per step)."""
    gen_cfg = cfg.generator
    assert isinstance(gen_cfg, CGanConfig)
    hsg = pairs = discriminator = None
    if cfg.hsg.enabled:
        hsg = HardSampleGAN(gen_cfg, cfg.hsg, channels, size, num_classes, load_weights=load_weights)
        discriminator = hsg.discriminator
    if cfg.hpg.enabled:
        if hsg is None:
            g_a, discriminator = build_cgan(gen_cfg, channels, size, num_classes, load_weights=load_weights)
        else:
            g_a = build_generator(gen_cfg, channels, size, num_classes, load_weights=load_weights)
        pairs = GeneratorPair(gen_cfg, cfg.hpg, g_a)
    for part in (hsg, pairs):
        for sub in part.modules() if part is not None else ():
            if isinstance(sub, Generator):
                sub.check_conditions = False
    assert discriminator is not None, "the cGAN producer runs with hsg.enabled or hpg.enabled"
    return hsg, pairs, discriminator


class CGanProducer(Producer):
    """G (HSG), G_a/G_b (HPG) and the discriminator D that judges all of them.

    Built directly (``CGanProducer(cfg, channels, size, num_classes)``) it holds freshly initialised modules;
    ``for_training`` adds a run's context. A finished run's EMA weights are read back as a
    :class:`~synthkit.samplers.cgan.CGanSampler`.
    """

    kind: ClassVar[str] = "cgan"
    Config: ClassVar[type] = CGanConfig
    Sampler: ClassVar[type] = CGanSampler

    def __init__(
        self, cfg: PipelineConfig, channels: int, size: int, num_classes: int, *, load_weights: bool = True
    ) -> None:
        gen_cfg = cfg.generator
        assert isinstance(gen_cfg, CGanConfig)
        self.cfg, self.gen_cfg = cfg, gen_cfg
        self.channels, self.size, self.num_classes = channels, size, num_classes
        self.hsg, self.pairs, self.discriminator = build_gan(cfg, channels, size, num_classes, load_weights)
        self.adversary = Adversary(self.discriminator, gen_cfg)
        self.conditions: Conditions | None = None
        self.generator_steps = 0  # G's own updates, pre-training and an init run's included
        self.ctx: TrainContext | None = None
        self.init: GanInit | None = None
        self.weights_hash = _weights_hash(gen_cfg.weights) if load_weights else None

    # ------------------------------------------------------------------ training
    @classmethod
    def for_training(cls, cfg: PipelineConfig, ctx: TrainContext) -> CGanProducer:
        real = ctx.real  # None: real data streamed from shard sets (mix.sources)
        n_cond = num_conditions(
            cfg.conditions, len(real.classes) if real is not None and real.classes else None
        )
        init = None
        assert isinstance(cfg.generator, CGanConfig)
        if cfg.generator.init_run:
            with torch.random.fork_rng(devices=[]):  # loading builds models: keep this run's initial weights
                init = GanInit.load(cfg, real, n_cond)
        self = cls(cfg, ctx.channels, ctx.size, n_cond)
        self.ctx, self.init = ctx, init
        self.run_conditions = RunConditions(cfg, ctx, n_cond)
        if init is not None:
            init.apply(self.hsg, self.pairs, self.discriminator, seed=cfg.train.seed)
            # the starting pseudo-classes; epoch 0's k-means is matched to them
            self.conditions, self.generator_steps = init.conditions, init.generator_steps
        if cfg.train.channels_last:
            for module in self._trainable():
                module.to(memory_format=torch.channels_last)
        self.b_syn = ctx.per_step(cfg.hsg.synthetic_ratio) if self.hsg else 0
        self.b_pair = ctx.per_step(cfg.hpg.pair_ratio) if self.pairs else 0
        self.probe = min(32, cfg.train.batch_size // ctx.accelerator.num_processes) if self.pairs else 0
        self.adaptive = AdaptiveTarget(cfg.hpg.adaptive_momentum)
        self.refreshed_at: int | None = None
        return self

    def _trainable(self) -> list[nn.Module]:
        out: list[nn.Module] = [self.discriminator]
        if self.hsg is not None:
            out.append(self.hsg.generator)
        if self.pairs is not None:
            out += [self.pairs.generator_a, self.pairs.generator_b]
        return out

    def prepare(self, accelerator: Accelerator) -> None:
        items: list[Any] = [self.discriminator, self.adversary.optimizer()]
        if self.hsg is not None:
            items += [self.hsg.generator, self.hsg.optimizer()]
        if self.pairs is not None:
            items += [self.pairs.generator_a, self.pairs.generator_b]
        prepared = list(accelerator.prepare(*items))
        self.adversary.prepared(prepared[0], prepared[1])
        rest = prepared[2:]
        self.g_ddp = self.opt_g = None
        if self.hsg is not None:
            self.g_ddp, self.opt_g, rest = rest[0], rest[1], rest[2:]
            self.hsg.ema.to(accelerator.device)
        self.ga_ddp = self.gb_ddp = self.opt_pair = None
        if self.pairs is not None:
            self.ga_ddp, self.gb_ddp = rest[0], rest[1]
            # one optimizer over both generators, built on the prepared modules' parameters
            self.opt_pair = accelerator.prepare(self.pairs.optimizer(rest[0], rest[1]))
            self.pairs.ema_a.to(accelerator.device)
            self.pairs.ema_b.to(accelerator.device)

    def start(self, resumed: bool) -> None:
        if resumed or not self.gen_cfg.pretrain_steps:
            return
        self.conditions = self.run_conditions.fit(0, self.conditions)
        self.refreshed_at = 0  # the encoder does not change during pre-training: epoch 0 keeps these
        self._pretrain()

    def on_epoch_start(self, epoch: int) -> None:
        due = self.conditions is None or epoch % self.cfg.conditions.refresh_every == 0
        if due and self.refreshed_at != epoch:
            self.conditions = self.run_conditions.fit(epoch, self.conditions)

    def _pretrain(self) -> None:
        """``generator.pretrain_steps`` GAN steps on realism alone (``gan_pretrain.py``), before the encoder's
        first step: the HSG generator (or G_a when HPG runs alone) against D; with HPG, G_a and G_b then
        restart from it (G_b perturbed), so every generator starts from the same pre-trained G."""
        assert self.ctx is not None
        if self.hsg is not None:
            gen, opt, ema, b_fake, which = self.g_ddp, self.opt_g, self.hsg.ema, self.b_syn, "cGAN"
        else:
            assert self.pairs is not None
            gen, opt, ema = self.ga_ddp, self.opt_pair, self.pairs.ema_a
            b_fake, which = 2 * self.b_pair, "cGAN (G_a)"
        pretraining = GanPretraining(self.ctx, self.adversary, self.run_conditions, logger)
        self.generator_steps += pretraining.run(gen, opt, ema, self.conditions, b_fake, which)
        if self.pairs is not None:  # G_a and G_b start from the pre-trained G's EMA, as from an init_run
            state = {k: v.detach().clone() for k, v in ema.module.state_dict().items()}
            self.pairs.restart_from(state, seed=self.cfg.train.seed)

    def contribute(self, batch: StepInput) -> Contribution:
        """(a) the D step, (b) realism and (c) the pair term; the chunks for the encoder's pass (d)."""
        ctx = self.ctx
        assert ctx is not None
        device, cfg, draw = ctx.accelerator.device, self.cfg, self.run_conditions.draw
        c_real = self.run_conditions.of_batch(self.conditions, batch.index, batch.images)
        c_fake = draw(self.conditions, self.b_syn) if self.hsg is not None else None
        pair_c = draw(self.conditions, self.b_pair) if self.pairs is not None else None
        target = 1.0
        if self.pairs is not None:
            progress = schedule_progress(cfg.hpg, batch.t, cfg.train.epochs)
            target = target_similarity(cfg.hpg, progress, self.adaptive.value)
        lambda_hard = hsg_lambda(cfg.hsg, batch.t)
        z = torch.randn(self.b_syn, self.gen_cfg.z_dim, device=device) if self.hsg is not None else None
        pair_z = (
            torch.randn(self.b_pair, self.gen_cfg.z_dim, device=device) if self.pairs is not None else None
        )
        return self.step_terms(
            batch.images,
            c_real,
            z,
            c_fake,
            lambda_hard=lambda_hard,
            use_synthetic=self.hsg is not None and batch.epoch >= cfg.hsg.warmup_epochs,
            pair_z=pair_z,
            pair_c=pair_c,
            pair_target=target,
            use_pairs=self.pairs is not None and batch.epoch >= cfg.hpg.warmup_epochs,
            real_positive_probe=self.probe,
        )

    def step_terms(
        self,
        x_real: torch.Tensor,
        c_real: torch.Tensor | None,
        z: torch.Tensor | None,
        c_fake: torch.Tensor | None,
        *,
        lambda_hard: float,
        use_synthetic: bool,
        pair_z: torch.Tensor | None = None,
        pair_c: torch.Tensor | None = None,
        pair_target: float | torch.Tensor = 1.0,
        use_pairs: bool = False,
        real_positive_probe: int = 0,
    ) -> Contribution:
        """The producer's part of one joint step for given latents and conditions (see the module)."""
        ctx = self.ctx
        assert ctx is not None
        acc = ctx.accelerator
        # records stay on the device (0-d tensors; floats for schedule values): the loop reads them once
        # per train.log_every (training/records.py)
        rec: dict[str, Any] = {}
        with acc.autocast():
            fakes: list[torch.Tensor] = []
            conds: list[torch.Tensor | None] = []
            names: list[str] = []
            hard = x_a = x_b = None
            if self.hsg is not None:
                assert z is not None
                hard = self.g_ddp(z, c_fake)
                fakes.append(hard)
                conds.append(c_fake)
                names.append("loss_g_adv")
            if self.pairs is not None:
                assert pair_z is not None
                x_a, x_b = self.ga_ddp(pair_z, pair_c), self.gb_ddp(pair_z, pair_c)
                fakes += [x_a, x_b]
                conds += [pair_c, pair_c]
                names += ["loss_a_adv", "loss_b_adv"]
            c_all = None if conds[0] is None else torch.cat(conds)  # type: ignore[arg-type]
            fake_all = torch.cat(fakes)
        # (a) D step on real vs generated (detached inside)
        rec["loss_d"] = self.adversary.step(acc, x_real, c_real, fake_all, c_all).detach()
        chunks: list[Chunk] = []
        with acc.autocast():
            # (b) realism of every generator, D frozen: one hinge term each
            loss_gen = torch.zeros((), device=x_real.device)
            for x, c, name in zip(fakes, conds, names, strict=True):
                term = self.adversary.realism(x, c)
                rec[name] = term.detach()
                loss_gen = loss_gen + term
            # (c) HPG: pair similarity in the fixed encoder's backbone space
            if self.pairs is not None:
                encoder = ctx.encoder()
                loss_pair, pair_rec = self.pairs.similarity_terms(encoder, x_a, x_b, pair_target)
                loss_gen = loss_gen + loss_pair
                rec.update(pair_rec)
                if real_positive_probe:
                    probe = x_real[:real_positive_probe]
                    rec["real_positive_similarity"] = real_positive_similarity(encoder, ctx.views, probe)
            # the chunks of (d): the reversal turns the encoder's descent on L_CL into G's ascent, scaled by
            # lambda_hard; the encoder itself sees the synthetic images as plain data
            if hard is not None and use_synthetic:
                chunks.append(Chunk(grad_reverse(hard, lambda_hard), "syn"))
            if x_a is not None and use_pairs:
                chunks.append(Chunk(x_a.detach(), "pair", partner=x_b.detach()))
        if self.hsg is not None:
            rec["lambda_hard"] = lambda_hard
        optimizers = [o for o in (self.opt_g, self.opt_pair) if o is not None]
        return Contribution(chunks, loss_gen, optimizers, rec)

    def after_step(self, records: dict[str, Any]) -> None:
        if self.hsg is not None:
            self.hsg.update_ema()
        if self.pairs is not None:
            self.pairs.update_ema()
            if "real_positive_similarity" in records:
                self.adaptive.update(records["real_positive_similarity"])
        self.generator_steps += 1

    # ------------------------------------------------------------------ checkpoints
    def _emas(self) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        if self.hsg is not None:
            out["generator_ema"] = self.hsg.ema
        if self.pairs is not None:
            out.update(pair_ema_a=self.pairs.ema_a, pair_ema_b=self.pairs.ema_b)
        return out

    def save_state(self, directory: Path) -> None:
        for name, module in self._emas().items():
            save_state_dict(module, directory / f"producer_{name}.safetensors")
        cond = self.conditions
        meta = {
            "generator_steps": self.generator_steps,
            "hpg_adaptive": None if self.adaptive.value is None else float(self.adaptive.value),
            "conditions": None
            if cond is None
            else save_conditions(cond, directory / "producer_conditions.safetensors"),
        }
        (directory / STATE_JSON).write_text(json.dumps(meta, indent=2))

    def checkpoint_layout(self) -> dict[str, nn.Module]:
        return {f"producer_{name}.safetensors": module for name, module in self._emas().items()}

    def load_state(self, directory: Path) -> None:
        meta = _read_json(directory / STATE_JSON)
        try:
            self.generator_steps = int(meta["generator_steps"])
            self.adaptive.restore(meta["hpg_adaptive"], self.ctx.accelerator.device if self.ctx else "cpu")
            c = meta["conditions"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{directory / STATE_JSON} is malformed: {type(e).__name__}: {e}") from e
        for name, module in self._emas().items():
            path = directory / f"producer_{name}.safetensors"
            load_into(module, load_state_dict(path), str(path))
        if c is not None:
            self.conditions = load_conditions(directory / "producer_conditions.safetensors", c)

    def fingerprint_modules(self) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        if self.hsg is not None:
            out["generator"] = self.hsg.generator
        if self.pairs is not None:
            out["generator_b"] = self.pairs.generator_b
        return out

    # ------------------------------------------------------------------ what the run records
    def frozen(self) -> CGanSampler:
        """The EMA generators, D, the conditions and the generator step as they stand, as a frozen sampler
        (sharing the modules): what the run publishes."""
        pairs = self.pairs
        return CGanSampler(
            self.gen_cfg,
            self._meta(),
            generator=self.hsg.ema_generator if self.hsg is not None else None,
            pair=(pairs.ema_a.module, pairs.ema_b.module) if pairs is not None else None,
            discriminator=self.discriminator,
            conditions=self.conditions,
            generator_steps=self.generator_steps,
        )

    def publish(self, directory: Path) -> dict[str, Any]:
        return {"kind": self.kind, **self.frozen().publish(directory)}

    def _meta(self) -> dict[str, Any]:
        return generator_meta(self.gen_cfg, self.channels, self.size, self.num_classes, self.weights_hash)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self._meta()}

    def summary(self) -> dict[str, Any]:
        init = self.init
        return {"generator_init": {"run": str(init.run), "hashes": init.hashes}} if init is not None else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data
