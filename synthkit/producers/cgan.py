"""The cGAN producer: HSG's hard-sample generator and HPG's pair of generators, with one discriminator.

Wu et al., "Synthetic Data Can Also Teach", AAAI 2023, in our formulation (docs/method.md, "HSG with a
conditional GAN"): one joint step is (a) one D step on real vs every generator's samples, (b) each generator's
realism term with D frozen, (c) with HPG, the pair-similarity term of G_a and G_b under the fixed encoder, and
(d) the encoder's pass over real, hard and pair views (``training/steps.py``), whose backward pass also
carries (b) and (c) and, through a gradient reversal scaled by lambda_hard, trains the HSG generator to
increase the encoder's loss. This module does (a)-(c) and hands (d) its chunks; the pieces are in
``hard_samples.py`` (G, D, EMA, losses) and ``positive_pairs.py`` (the pair, its target schedule).

Conditions are k-means pseudo-classes of the real images, refreshed every ``conditions.refresh_every``
epochs (or true labels, or none). ``generator.pretrain_steps`` trains G and D on realism alone before the
encoder's first step; ``generator.init_run`` starts G, D and the conditions from another finished cGAN run.
Published: the EMA generators (``generator_ema``; ``generator_a_ema``/``generator_b_ema`` with HPG), the
discriminator and the conditions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from synthkit.config import PipelineConfig, to_dict
from synthkit.data.batches import FIT_EPOCH, sample_images
from synthkit.data.views import to_float
from synthkit.distributed import reduce_values
from synthkit.encoders.model import eval_features
from synthkit.errors import CheckpointError, RunError
from synthkit.generators.cgan import Generator, build_cgan, build_generator
from synthkit.producer_configs.cgan import CGanConfig
from synthkit.producers.base import Chunk, Contribution, Producer, StepInput, TrainContext
from synthkit.producers.conditions import num_conditions, refresh_conditions, refresh_stream_conditions
from synthkit.producers.hard_samples import (
    HardSampleGAN,
    adversarial_loss,
    discriminator_loss,
    grad_reverse,
    hsg_lambda,
)
from synthkit.producers.positive_pairs import (
    AdaptiveTarget,
    GeneratorPair,
    backbone_similarity,
    pair_loss,
    schedule_progress,
    target_similarity,
)
from synthkit.progress import Phase
from synthkit.provenance import state_dict_hash
from synthkit.run_files.final import load_final
from synthkit.samplers.cgan import CGanSampler, generator_meta
from synthkit.samplers.conditions import Conditions, load_conditions, save_conditions
from synthkit.weights import load_into, load_state_dict, save_state_dict

if TYPE_CHECKING:
    from accelerate import Accelerator

    from synthkit.data.sources import ImageSet

# the pre-training's passes over the real batches use the batches' own permutations at "epochs" the
# encoder's epochs never reach
PRETRAIN_EPOCH_BASE = 1_000_000
STATE_JSON = "producer_state.json"

logger = logging.getLogger(__name__)


def _weights_hash(path: str | None) -> str | None:
    return None if path is None else state_dict_hash(load_state_dict(Path(path)))


class CGanProducer(Producer):
    """G (HSG), G_a/G_b (HPG) and the discriminator D that judges all of them.

    Built directly (``CGanProducer(cfg, channels, size, num_classes)``) it holds freshly initialised modules;
    ``for_training`` adds a run's context and ``load`` a finished run's EMA weights.
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
        self.hsg: HardSampleGAN | None = None
        self.pairs: GeneratorPair | None = None
        if cfg.hsg.enabled:
            self.hsg = HardSampleGAN(gen_cfg, cfg.hsg, channels, size, num_classes, load_weights=load_weights)
            self.discriminator: nn.Module = self.hsg.discriminator
        if cfg.hpg.enabled:  # one D judges every generator: HSG's when it runs, else the pair's own
            if self.hsg is None:
                g_a, self.discriminator = build_cgan(
                    gen_cfg, channels, size, num_classes, load_weights=load_weights
                )
            else:
                g_a = build_generator(gen_cfg, channels, size, num_classes, load_weights=load_weights)
            self.pairs = GeneratorPair(gen_cfg, cfg.hpg, g_a)
        for part in (self.hsg, self.pairs):
            for sub in part.modules() if part is not None else ():
                if isinstance(sub, Generator):  # ids drawn in range by construction: no per-step check
                    sub.check_conditions = False
        self.conditions: Conditions | None = None
        self.generator_steps = 0  # G's own updates, pre-training and an init run's included
        self.ctx: TrainContext | None = None
        self.init: _GanInit | None = None
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
                init = _GanInit.load(cfg, real, n_cond)
        self = cls(cfg, ctx.channels, ctx.size, n_cond)
        self.ctx = ctx
        if init is not None:
            init.apply(self)
        self.init = init
        if cfg.train.channels_last:
            for module in self._trainable():
                module.to(memory_format=torch.channels_last)
        world = ctx.accelerator.num_processes
        b_real = cfg.train.batch_size // world
        self.b_syn = max(1, round(b_real * cfg.hsg.synthetic_ratio)) if self.hsg else 0
        self.b_pair = max(1, round(b_real * cfg.hpg.pair_ratio)) if self.pairs else 0
        self.probe = min(32, b_real) if self.pairs else 0
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
        g = self.gen_cfg
        # fused Adam: one kernel per step, and its step counters stay on the device (no host read)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=g.lr_d, betas=g.betas, fused=True)
        items: list[Any] = [self.discriminator, opt_d]
        if self.hsg is not None:
            opt_g = torch.optim.Adam(self.hsg.generator.parameters(), lr=g.lr_g, betas=g.betas, fused=True)
            items += [self.hsg.generator, opt_g]
        if self.pairs is not None:
            items += [self.pairs.generator_a, self.pairs.generator_b]
        prepared = list(accelerator.prepare(*items))
        self.d_ddp, self.opt_d = prepared[0], prepared[1]
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

    def _refresh(self, epoch: int) -> None:
        ctx = self.ctx
        assert ctx is not None
        if ctx.real is None:  # streamed: k-means on a bounded sample, batches assigned by their features
            self.conditions = refresh_stream_conditions(
                self.cfg.conditions,
                ctx.accelerator,
                ctx.encoder(),
                lambda: sample_images(ctx.batches, self.cfg.conditions.fit_samples, FIT_EPOCH + epoch),
                self.conditions,
                seed=self.cfg.train.seed + epoch,
                num_classes=self.num_classes,
            )
            return
        self.conditions = refresh_conditions(
            self.cfg.conditions,
            ctx.accelerator,
            ctx.encoder(),
            ctx.real,
            self.conditions,
            seed=self.cfg.train.seed + epoch,
            num_classes=self.num_classes,
        )

    def start(self, resumed: bool) -> None:
        if resumed or not self.gen_cfg.pretrain_steps:
            return
        self._refresh(0)
        self.refreshed_at = 0  # the encoder does not change during pre-training: epoch 0 keeps these
        self._pretrain()

    def on_epoch_start(self, epoch: int) -> None:
        due = self.conditions is None or epoch % self.cfg.conditions.refresh_every == 0
        if due and self.refreshed_at != epoch:
            self._refresh(epoch)

    def _c(self, index: Any, images: torch.Tensor) -> torch.Tensor | None:
        """The real batch's conditions: looked up (in-memory data) or assigned by its features (streamed)."""
        assert self.conditions is not None and self.ctx is not None
        if not self.num_classes:
            return None
        if self.conditions.centroids is None:
            # non-blocking: a fresh host tensor, staged by the copy; the host does not wait for the device
            return self.conditions.labels[index].to(self.ctx.accelerator.device, non_blocking=True)
        return self.conditions.assign(eval_features(self.ctx.encoder(), images))

    def _draw(self, n: int) -> torch.Tensor | None:
        assert self.conditions is not None and self.ctx is not None
        c = self.conditions.sample(n) if self.num_classes else None
        return c.to(self.ctx.accelerator.device, non_blocking=True) if c is not None else None

    def realism(self, fake: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """L_adv of a generator's samples with D frozen (the bare D: it receives no gradient here)."""
        return adversarial_loss(self.discriminator, self.gen_cfg, fake, c)

    def _pretrain(self) -> None:
        """``generator.pretrain_steps`` GAN steps on realism alone, before the encoder's first step.

        Trains the HSG generator (or G_a when HPG runs alone) against D; with HPG, G_a and G_b then restart
        from it (G_b perturbed), so every generator starts from the same pre-trained G.
        """
        ctx = self.ctx
        assert ctx is not None
        acc, steps = ctx.accelerator, self.gen_cfg.pretrain_steps
        if self.hsg is not None:
            gen, opt, ema = self.g_ddp, self.opt_g, self.hsg.ema
        else:
            assert self.pairs is not None
            gen, opt, ema = self.ga_ddp, self.opt_pair, self.pairs.ema_a
        b_fake = self.b_syn if self.hsg is not None else 2 * self.b_pair
        which = "cGAN" if self.hsg is not None else "cGAN (G_a)"
        phase = Phase(
            f"pretraining {which}",
            steps,
            progress=ctx.progress,
            logger=logger,
            main=acc.is_main_process,
            detail=f" of realism alone, {b_fake} samples a step",
        )
        with phase:
            self._pretrain_steps(phase, gen, opt, ema, b_fake)
        if self.pairs is not None:  # G_a and G_b start from the pre-trained G's EMA, as from an init_run
            state = {k: v.detach().clone() for k, v in ema.module.state_dict().items()}
            self.pairs.restart_from(state, seed=self.cfg.train.seed)

    def _pretrain_steps(self, phase: Phase, gen: nn.Module, opt: Any, ema: Any, b_fake: int) -> None:
        ctx = self.ctx
        assert ctx is not None
        acc, device, steps = ctx.accelerator, ctx.accelerator.device, self.gen_cfg.pretrain_steps
        done, pass_ = 0, 0
        while done < steps:
            for idx, images in ctx.batches.epoch(PRETRAIN_EPOCH_BASE + pass_):
                x_real = to_float(images).to(device)
                c_real, c_fake = self._c(idx, x_real), self._draw(b_fake)
                with acc.autocast():
                    fake = gen(torch.randn(b_fake, self.gen_cfg.z_dim, device=device), c_fake)
                    loss_d = discriminator_loss(self.d_ddp, self.gen_cfg, x_real, c_real, fake, c_fake)
                self.opt_d.zero_grad(set_to_none=True)
                acc.backward(loss_d)
                self.opt_d.step()
                with acc.autocast():
                    loss_g = self.realism(fake, c_fake)
                opt.zero_grad(set_to_none=True)
                acc.backward(loss_g)
                opt.step()
                ema.update_parameters(acc.unwrap_model(gen))
                done += 1
                self.generator_steps += 1
                phase.update()
                if done % self.cfg.train.log_every == 0 or done == steps:
                    losses = reduce_values({"loss_d": loss_d.item(), "loss_g_adv": loss_g.item()}, device)
                    ctx.log({"pretrain_step": done, **losses})
                    phase.result(**losses)
                if done == steps:
                    break
            pass_ += 1

    def contribute(self, batch: StepInput) -> Contribution:
        """(a) the D step, (b) realism and (c) the pair term; the chunks for the encoder's pass (d)."""
        ctx = self.ctx
        assert ctx is not None
        device, cfg = ctx.accelerator.device, self.cfg
        x_real = batch.images
        c_real = self._c(batch.index, batch.images)
        c_fake = self._draw(self.b_syn) if self.hsg is not None else None
        pair_c = self._draw(self.b_pair) if self.pairs is not None else None
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
            x_real,
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
        acc, g = ctx.accelerator, self.gen_cfg
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
            # (a) D step on real vs generated (detached inside)
            loss_d = discriminator_loss(self.d_ddp, g, x_real, c_real, torch.cat(fakes), c_all)
        self.opt_d.zero_grad(set_to_none=True)
        acc.backward(loss_d)
        self.opt_d.step()
        rec["loss_d"] = loss_d.detach()
        chunks: list[Chunk] = []
        with acc.autocast():
            # (b) realism of every generator, D frozen: one hinge term each
            loss_gen = torch.zeros((), device=x_real.device)
            for x, c, name in zip(fakes, conds, names, strict=True):
                term = self.realism(x, c)
                rec[name] = term.detach()
                loss_gen = loss_gen + term
            # (c) HPG: pair similarity in the fixed encoder's backbone space
            if self.pairs is not None:
                encoder = ctx.encoder()
                s = backbone_similarity(encoder, x_a, x_b)
                loss_pair = pair_loss(s, pair_target, self.cfg.hpg.lambda_pair, self.cfg.hpg.mu)
                loss_gen = loss_gen + loss_pair
                rec.update(
                    pair_similarity=s.detach().mean(), pair_target=pair_target, loss_pair=loss_pair.detach()
                )
                if real_positive_probe:
                    with torch.no_grad():
                        v1, v2 = ctx.views.two_views(x_real[:real_positive_probe])
                        rec["real_positive_similarity"] = backbone_similarity(encoder, v1, v2).mean()
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
        if self.conditions is not None:
            save_conditions(self.conditions, directory / "producer_conditions.safetensors")
        meta = {
            "generator_steps": self.generator_steps,
            "hpg_adaptive": None if self.adaptive.value is None else float(self.adaptive.value),
            "conditions": None
            if self.conditions is None
            else {"num_classes": self.conditions.num_classes, "source": self.conditions.source},
        }
        (directory / STATE_JSON).write_text(json.dumps(meta, indent=2))

    def checkpoint_layout(self) -> dict[str, nn.Module]:
        return {f"producer_{name}.safetensors": module for name, module in self._emas().items()}

    def load_state(self, directory: Path) -> None:
        meta = _read_json(directory / STATE_JSON)
        try:
            self.generator_steps = int(meta["generator_steps"])
            adaptive = meta["hpg_adaptive"]
            self.adaptive.value = (
                None
                if adaptive is None
                else torch.tensor(float(adaptive), device=self.ctx.accelerator.device if self.ctx else "cpu")
            )
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

    def publish(self, directory: Path) -> dict[str, Any]:
        hashes: dict[str, str] = {}
        record: dict[str, Any] = {"kind": self.kind}
        if self.hsg is not None:
            hashes["generator_ema"] = save_state_dict(
                self.hsg.ema_generator, directory / "generator_ema.safetensors"
            )
            record["generator"] = self._meta()
        if self.pairs is not None:
            for side, ema in (("a", self.pairs.ema_a), ("b", self.pairs.ema_b)):
                hashes[f"generator_{side}_ema"] = save_state_dict(
                    ema.module, directory / f"generator_{side}_ema.safetensors"
                )
            record["pair_generator"] = self._meta()
        hashes["discriminator"] = save_state_dict(self.discriminator, directory / "discriminator.safetensors")
        if self.conditions is not None:
            save_conditions(self.conditions, directory / "conditions.safetensors")
            record["conditions"] = {
                "num_classes": self.conditions.num_classes,
                "source": self.conditions.source,
            }
        record["generator_steps"] = self.generator_steps
        record["hashes"] = hashes
        return record

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


class _GanInit:
    """``generator.init_run``: a finished cGAN run's G (EMA), D and conditions, checked against this run."""

    def __init__(
        self, run: Path, g_state: dict, d_state: dict, conditions: Conditions | None, hashes: dict, steps: int
    ) -> None:
        self.run, self.g_state, self.d_state = run, g_state, d_state
        self.conditions, self.hashes, self.generator_steps = conditions, hashes, steps

    @classmethod
    def load(cls, cfg: PipelineConfig, real: ImageSet, n_cond: int) -> _GanInit:
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
        src = art.cfg
        same = {k: v for k, v in to_dict(src.data).items() if k != "root"} == {
            k: v for k, v in to_dict(cfg.data).items() if k != "root"
        }
        cond = sampler.conditions
        if not same or (cond is not None and real is not None and len(cond.labels) != len(real)):
            raise RunError(
                f"generator.init_run={run} was trained on other real data ({to_dict(src.data)}); a GAN "
                f"started from it must train on the same images ({to_dict(cfg.data)})"
            )
        sg = src.generator
        assert isinstance(sg, CGanConfig)
        shape, ours = (
            (sg.z_dim, sg.g_channels, sg.d_channels),
            (gen_cfg.z_dim, gen_cfg.g_channels, gen_cfg.d_channels),
        )
        n_src = cond.num_classes if cond is not None else 0
        if shape != ours or n_src != n_cond or src.conditions.mode != cfg.conditions.mode:
            raise RunError(
                f"generator.init_run={run} has generator (z_dim, g_channels, d_channels) = {shape} with "
                f"{n_src} {src.conditions.mode} conditions; this run needs {ours} with {n_cond} "
                f"{cfg.conditions.mode} conditions"
            )
        return cls(
            run,
            sampler.main_generator.state_dict(),
            sampler.discriminator.state_dict(),
            cond,
            art.hashes,
            sampler.generator_steps,
        )

    def apply(self, producer: CGanProducer) -> None:
        """Start ``producer``'s generators (and EMAs), D and conditions from this run."""

        def load(module: nn.Module, state: dict, part: str) -> None:
            try:
                module.load_state_dict(state)
            except RuntimeError as e:
                raise RunError(
                    f"the {part} of generator.init_run={self.run} does not fit this run: {e}"
                ) from e

        if producer.hsg is not None:
            load(producer.hsg.generator, self.g_state, "generator")
            producer.hsg.ema.module.load_state_dict(producer.hsg.generator.state_dict())
        if producer.pairs is not None:
            load(producer.pairs.generator_a, self.g_state, "generator")
            producer.pairs.restart_from(self.g_state, seed=producer.cfg.train.seed)
        load(producer.discriminator, self.d_state, "discriminator")
        producer.conditions = (
            self.conditions
        )  # the starting pseudo-classes; epoch 0's k-means is matched to them
        producer.generator_steps = self.generator_steps
