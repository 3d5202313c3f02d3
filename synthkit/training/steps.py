"""One training step, plain or joint; the loop and the step benchmark both call these.

``plain_step`` is CL on real data (optionally with the frozen samples of the naive-synthetic baseline).
``joint_step`` is the method (METHOD.md): (a) one D step on real vs every generator's samples, (b) each
generator's realism term with D frozen, (c) with HPG, the pair-similarity term of G_a and G_b under the
fixed encoder, (d) one encoder pass over real, hard and pair views whose backward pass trains the encoder
on L_CL and, through a gradient reversal scaled by lambda_hard, trains the HSG generator to increase it.

The objective (SimCLR or MoCo v2) only changes how the encoder's projections are scored: see
``_contrastive``. Rows of the per-view losses are [view 1 of every image, view 2 of every image], images
in chunk order [real, hard, pair a, pair b].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch import nn

from synthkit.config import GeneratorConfig
from synthkit.data.views import Views
from synthkit.encoders.momentum import MomentumEncoder
from synthkit.losses.moco import moco_per_view
from synthkit.losses.multi_positive import multi_positive_nt_xent_per_view, view_groups
from synthkit.losses.nt_xent import nt_xent_per_view, per_sample_hardness
from synthkit.producers.hard_samples import (
    HardSampleProducer,
    adversarial_loss,
    discriminator_loss,
    grad_reverse,
)
from synthkit.producers.positive_pairs import PairProducer, backbone_similarity, pair_loss


@dataclass
class StepParts:
    """The prepared models and optimizers a step needs (DDP-wrapped where Accelerate wrapped them)."""

    accelerator: Accelerator
    encoder: nn.Module
    views: Views
    opt_enc: torch.optim.Optimizer
    temperature: float
    producer: HardSampleProducer | None = None
    generator: nn.Module | None = None
    discriminator: nn.Module | None = None
    opt_g: torch.optim.Optimizer | None = None
    opt_d: torch.optim.Optimizer | None = None
    # HPG: the pair producer, its prepared generators and their one optimizer
    pairs: PairProducer | None = None
    generator_a: nn.Module | None = None
    generator_b: nn.Module | None = None
    opt_pair: torch.optim.Optimizer | None = None
    gen_cfg: GeneratorConfig | None = None
    # MoCo v2 (objective.name = moco)
    momentum: MomentumEncoder | None = None
    moco_momentum: float = 0.99
    queue_synthetic: bool = True
    extras: dict = field(default_factory=dict)


@dataclass
class Scored:
    per_view: torch.Tensor  # 2M per-view losses
    keys: torch.Tensor | None = None  # MoCo: keys to enqueue after the step


def _contrastive(parts: StepParts, chunks: list[torch.Tensor], paired: list[bool] | None = None) -> Scored:
    """Per-view contrastive losses of two fresh views of every image of ``chunks``, in one encoder pass.

    Views of each chunk are drawn separately and handed to the encoder as chunks, so autograd
    differentiates through the augmentations and the encoder's first layer only for the chunks that need
    it (the synthetic ones). ``paired[i]`` makes chunk i and chunk i+1 one pair of positive groups.
    """
    paired = paired or [False] * len(chunks)
    views = [parts.views.two_views(c) for c in chunks]
    first, second = [v[0] for v in views], [v[1] for v in views]
    z = parts.encoder(torch.cat(first + second)) if len(chunks) == 1 else parts.encoder(first + second)
    sizes = [len(c) for c in chunks]
    grouped = any(paired)
    ids = view_groups(sizes, paired).to(z.device) if grouped else None
    if parts.momentum is None:
        if not grouped:
            return Scored(nt_xent_per_view(*z.chunk(2), temperature=parts.temperature))
        return Scored(multi_positive_nt_xent_per_view(z, torch.cat([ids, ids]), parts.temperature))
    k = parts.momentum.keys(torch.cat(first + second).detach())
    if ids is None:
        ids = torch.arange(sum(sizes), device=z.device)
    per_view = moco_per_view(z, k, torch.cat([ids, ids]), parts.momentum.queue.clone(), parts.temperature)
    n_images = sum(sizes)
    keys = k[n_images:] if parts.queue_synthetic else k[n_images : n_images + sizes[0]]
    return Scored(per_view, keys)


def _after_encoder_step(parts: StepParts, scored: Scored) -> None:
    """MoCo: move the key encoder towards the query encoder and enqueue this step's keys (all processes')."""
    if parts.momentum is None or scored.keys is None:
        return
    acc = parts.accelerator
    parts.momentum.update(acc.unwrap_model(parts.encoder), parts.moco_momentum)
    parts.momentum.enqueue(acc.gather(scored.keys.contiguous()))


def plain_step(
    parts: StepParts,
    x_real: torch.Tensor,
    synthetic: torch.Tensor | None = None,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float]:
    """CL on real images plus fixed synthetic images as plain data: ``synthetic`` (e.g. the naive baseline's
    samples or a diffusion pool's hard samples) as their own instances, ``pairs`` (x_a, x_b) as positive
    groups of four views, as in the joint step."""
    acc = parts.accelerator
    with acc.autocast():
        chunks, paired = [x_real], [False]
        if synthetic is not None and len(synthetic):
            chunks.append(synthetic)
            paired.append(False)
        if pairs is not None and len(pairs[0]):
            chunks += [pairs[0], pairs[1]]
            paired += [True, False]
        scored = _contrastive(parts, chunks, paired)
        loss = scored.per_view.mean()
    parts.opt_enc.zero_grad(set_to_none=True)
    acc.backward(loss)
    parts.opt_enc.step()
    _after_encoder_step(parts, scored)
    rec = {"loss_cl": loss.item()}
    if len(chunks) > 1:
        hard = per_sample_hardness(scored.per_view.detach())
        n = len(x_real)
        rec["hardness_real"] = hard[:n].mean().item()
        if synthetic is not None and len(synthetic):
            rec["hardness_syn"] = hard[n : n + len(synthetic)].mean().item()
            n += len(synthetic)
        if pairs is not None and len(pairs[0]):
            rec["hardness_pair"] = hard[n:].mean().item()
    return rec


def gan_step(
    parts: StepParts,
    generator: nn.Module,
    opt_g: torch.optim.Optimizer,
    x_real: torch.Tensor,
    c_real: torch.Tensor | None,
    z: torch.Tensor,
    c_fake: torch.Tensor | None,
) -> dict[str, float]:
    """One step of the GAN alone (``generator.pretrain_steps``): D on real vs G, then G on realism.

    The same losses as the joint step's (a) and (b); the encoder takes no part.
    """
    acc, gen_cfg = parts.accelerator, parts.gen_cfg
    assert parts.discriminator is not None and parts.opt_d is not None and gen_cfg is not None
    with acc.autocast():
        fake = generator(z, c_fake)
        loss_d = discriminator_loss(parts.discriminator, gen_cfg, x_real, c_real, fake, c_fake)
    parts.opt_d.zero_grad(set_to_none=True)
    acc.backward(loss_d)
    parts.opt_d.step()
    with acc.autocast():
        loss_g = adversarial_loss(acc.unwrap_model(parts.discriminator), gen_cfg, fake, c_fake)
    opt_g.zero_grad(set_to_none=True)
    acc.backward(loss_g)
    opt_g.step()
    return {"loss_d": loss_d.item(), "loss_g_adv": loss_g.item()}


def joint_step(
    parts: StepParts,
    x_real: torch.Tensor,
    c_real: torch.Tensor | None,
    z: torch.Tensor | None,
    c_fake: torch.Tensor | None,
    lambda_hard: float,
    use_synthetic: bool,
    *,
    pair_z: torch.Tensor | None = None,
    pair_c: torch.Tensor | None = None,
    pair_target: float = 1.0,
    use_pairs: bool = False,
    real_positive_probe: int = 0,
) -> dict[str, float]:
    """One step of the method; HSG runs when ``parts.producer`` is set, HPG when ``parts.pairs`` is set.

    ``real_positive_probe``: measure the encoder's backbone similarity of two views of that many real
    images (the signal of the adaptive HPG schedule), reported as ``real_positive_similarity``.
    """
    acc, producer, pairs = parts.accelerator, parts.producer, parts.pairs
    gen_cfg = parts.gen_cfg or (producer.gen_cfg if producer is not None else None)
    assert parts.discriminator is not None and parts.opt_d is not None and gen_cfg is not None
    d_bare = acc.unwrap_model(parts.discriminator)
    rec: dict[str, float] = {}
    with acc.autocast():
        fakes: list[torch.Tensor] = []
        conds: list[torch.Tensor | None] = []
        hard = None
        if producer is not None:
            assert parts.generator is not None and z is not None
            hard = parts.generator(z, c_fake)
            fakes.append(hard)
            conds.append(c_fake)
        x_a = x_b = None
        if pairs is not None:
            assert parts.generator_a is not None and parts.generator_b is not None and pair_z is not None
            x_a, x_b = parts.generator_a(pair_z, pair_c), parts.generator_b(pair_z, pair_c)
            fakes += [x_a, x_b]
            conds += [pair_c, pair_c]
        fake_all = torch.cat(fakes)
        c_all = None if conds[0] is None else torch.cat(conds)
        # (a) D step on real vs generated (detached inside)
        loss_d = discriminator_loss(parts.discriminator, gen_cfg, x_real, c_real, fake_all, c_all)
    parts.opt_d.zero_grad(set_to_none=True)
    acc.backward(loss_d)
    parts.opt_d.step()
    rec["loss_d"] = loss_d.item()
    with acc.autocast():
        # (b) realism of every generator, D frozen: one hinge term each
        names = (["loss_g_adv"] if hard is not None else []) + (
            ["loss_a_adv", "loss_b_adv"] if x_a is not None else []
        )
        loss_gen = torch.zeros((), device=x_real.device)
        for x, c, name in zip(fakes, conds, names, strict=True):
            hsg_term = name == "loss_g_adv" and producer is not None
            term = producer.adversarial_loss(x, c) if hsg_term else adversarial_loss(d_bare, gen_cfg, x, c)
            rec[name] = term.item()
            loss_gen = loss_gen + term
        # (c) HPG: pair similarity in the fixed encoder's backbone space
        if pairs is not None:
            enc_bare = acc.unwrap_model(parts.encoder)
            s = backbone_similarity(enc_bare, x_a, x_b)
            loss_pair = pair_loss(s, pair_target, pairs.hpg_cfg.lambda_pair, pairs.hpg_cfg.mu)
            loss_gen = loss_gen + loss_pair
            rec.update(pair_similarity=s.mean().item(), pair_target=pair_target, loss_pair=loss_pair.item())
            if real_positive_probe:
                with torch.no_grad():
                    v1, v2 = parts.views.two_views(x_real[:real_positive_probe])
                    rec["real_positive_similarity"] = backbone_similarity(enc_bare, v1, v2).mean().item()
        # (d) one encoder pass over real + synthetic: the reversal turns the encoder's descent on L_CL into
        # G's ascent, scaled by lambda_hard; the encoder itself sees the synthetic images as plain data
        chunks, paired = [x_real], [False]
        if hard is not None and use_synthetic:
            chunks.append(grad_reverse(hard, lambda_hard))
            paired.append(False)
        if x_a is not None and use_pairs:
            chunks += [x_a.detach(), x_b.detach()]
            paired += [True, False]
        scored = _contrastive(parts, chunks, paired)
        loss_cl = scored.per_view.mean()
    parts.opt_enc.zero_grad(set_to_none=True)
    for opt in (parts.opt_g, parts.opt_pair):
        if opt is not None:
            opt.zero_grad(set_to_none=True)
    acc.backward(loss_cl + loss_gen)
    parts.opt_enc.step()
    for opt in (parts.opt_g, parts.opt_pair):
        if opt is not None:
            opt.step()
    _after_encoder_step(parts, scored)
    if producer is not None:
        producer.update_ema()
        rec["lambda_hard"] = lambda_hard
    if pairs is not None:
        pairs.update_ema()
    per_image = per_sample_hardness(scored.per_view.detach())
    n = len(x_real)
    rec["loss_cl"] = loss_cl.item()
    rec["hardness_real"] = per_image[:n].mean().item()
    offset = n
    if hard is not None and use_synthetic:
        rec["hardness_syn"] = per_image[offset : offset + len(hard)].mean().item()
        offset += len(hard)
    if x_a is not None and use_pairs:
        rec["hardness_pair"] = per_image[offset:].mean().item()
    return rec
