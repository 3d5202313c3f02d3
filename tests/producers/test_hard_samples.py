"""Hard sample generation: gradient reversal, the lambda schedule, D/G losses, EMA, and the min-max step."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn

from synthkit.config import EncoderConfig, HSGConfig, PipelineConfig, SimCLRConfig, ViewsConfig
from synthkit.data.views import Views
from synthkit.encoders.model import Encoder
from synthkit.losses.nt_xent import nt_xent, nt_xent_per_view
from synthkit.objectives.base import build_objective
from synthkit.producer_configs.cgan import CGanConfig
from synthkit.producers.base import TrainContext
from synthkit.producers.cgan import CGanProducer
from synthkit.producers.hard_samples import HardSampleGAN, grad_reverse, hsg_lambda
from synthkit.training.steps import EncoderStep

SIZE, Z, K = 8, 8, 2
GEN = CGanConfig(z_dim=Z, g_channels=8, d_channels=8)


def _producer(num_classes: int = K, ema_decay: float = 0.999) -> HardSampleGAN:
    torch.manual_seed(0)
    cfg = CGanConfig(z_dim=Z, g_channels=8, d_channels=8, ema_decay=ema_decay)
    return HardSampleGAN(cfg, HSGConfig(), 1, SIZE, num_classes)


def _batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(n, 1, SIZE, SIZE, generator=g),
        torch.randn(n, Z, generator=g),
        torch.randint(0, K, (n,), generator=g),
    )


# --------------------------------------------------------------------------- gradient reversal


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 3.0])
def test_grad_reverse_is_identity_forward_and_scales_the_gradient_by_minus_scale(scale: float) -> None:
    x = torch.tensor([[1.0, -2.0], [0.5, 4.0]], requires_grad=True)
    y = grad_reverse(x, scale)
    assert torch.equal(y, x.detach())
    upstream = torch.tensor([[1.0, 2.0], [-3.0, 0.25]])
    y.backward(upstream)
    assert torch.equal(x.grad, -scale * upstream)


def test_grad_reverse_composes_with_a_loss() -> None:
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (grad_reverse(x, 2.0) ** 2).sum().backward()
    assert torch.equal(x.grad, -2.0 * 2 * x.detach())


# --------------------------------------------------------------------------- lambda schedule


def test_lambda_is_zero_during_warmup() -> None:
    cfg = HSGConfig(lambda_hard=2.0, warmup_epochs=2, ramp_epochs=4)
    assert [hsg_lambda(cfg, t) for t in (0.0, 1.0, 1.99, 2.0)] == [0.0, 0.0, 0.0, 0.0]


def test_lambda_ramps_linearly_then_stays_capped() -> None:
    cfg = HSGConfig(lambda_hard=2.0, warmup_epochs=2, ramp_epochs=4)
    for t in (2.5, 3.0, 4.0, 5.5):
        assert hsg_lambda(cfg, t) == pytest.approx(2.0 * (t - 2) / 4)
    # equal steps in t give equal steps in lambda inside the ramp
    a, b, c = (hsg_lambda(cfg, t) for t in (2.5, 3.5, 4.5))
    assert b - a == pytest.approx(c - b) and b > a
    assert [hsg_lambda(cfg, t) for t in (6.0, 7.0, 100.0)] == [2.0, 2.0, 2.0]


def test_lambda_without_ramp_switches_on_at_the_end_of_warmup() -> None:
    cfg = HSGConfig(lambda_hard=1.5, warmup_epochs=3, ramp_epochs=0)
    assert hsg_lambda(cfg, 2.999) == 0.0
    assert hsg_lambda(cfg, 3.0) == 1.5 and hsg_lambda(cfg, 10.0) == 1.5
    assert hsg_lambda(HSGConfig(warmup_epochs=0, ramp_epochs=0, lambda_hard=0.7), 0.0) == 0.7


# --------------------------------------------------------------------------- D and G losses


def test_adversarial_loss_trains_g_only_and_restores_d() -> None:
    producer = _producer()
    _, z, c = _batch(4)
    loss = producer.adversarial_loss(producer.generator(z, c), c)
    assert all(p.requires_grad for p in producer.discriminator.parameters())
    loss.backward()
    assert all(p.grad is None for p in producer.discriminator.parameters())
    g_grads = [p.grad for p in producer.generator.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in g_grads)
    assert sum(g.abs().sum() for g in g_grads) > 0


def test_adversarial_loss_restores_d_even_when_d_fails() -> None:
    producer = _producer()
    _, z, c = _batch(2)
    with pytest.raises(IndexError):
        producer.adversarial_loss(producer.generator(z, c), torch.tensor([0, 99]))
    assert all(p.requires_grad for p in producer.discriminator.parameters())


def test_discriminator_loss_trains_d_only() -> None:
    producer = _producer()
    real, z, c = _batch(4)
    fake = producer.generator(z, c)
    loss = producer.discriminator_loss(producer.discriminator, real, c, fake, c)
    assert loss.item() >= 0.0  # a sum of two hinge terms
    loss.backward()
    assert all(p.grad is None for p in producer.generator.parameters())
    d_grads = [p.grad for p in producer.discriminator.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in d_grads)
    assert sum(g.abs().sum() for g in d_grads) > 0


def test_discriminator_loss_uses_a_balanced_batch() -> None:
    producer = _producer()
    real, z, c = _batch(8)
    with torch.no_grad():  # let spectral norm's power iteration settle, then fix it for comparable calls
        for _ in range(10):
            producer.discriminator(real, c)
    producer.discriminator.eval()
    fake = producer.generator(z[:4], c[:4]).detach()
    other = real.clone()
    other[4:] = torch.rand(4, 1, SIZE, SIZE)
    torch.manual_seed(3)
    a = producer.discriminator_loss(producer.discriminator, real, c, fake, c[:4])
    torch.manual_seed(3)
    b = producer.discriminator_loss(producer.discriminator, other, c, fake, c[:4])
    torch.manual_seed(3)
    d = producer.discriminator_loss(producer.discriminator, real.flip(0), c.flip(0), fake, c[:4])
    assert a.item() == b.item()  # only the first len(fake) real images are used
    assert a.item() != d.item()


# --------------------------------------------------------------------------- EMA


def _params(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


@torch.no_grad()
def _set(m: nn.Module, values: list[torch.Tensor]) -> None:
    for p, v in zip(m.parameters(), values, strict=True):
        p.copy_(v)


def test_ema_copies_then_moves_most_of_the_way_early() -> None:
    producer = _producer(ema_decay=0.999)
    g = producer.generator
    w1 = [torch.randn_like(p) for p in g.parameters()]
    w2 = [torch.randn_like(p) for p in g.parameters()]
    _set(g, w1)
    producer.update_ema()
    for e, a in zip(producer.ema_generator.parameters(), w1, strict=True):
        assert torch.equal(e, a)  # first update copies
    _set(g, w2)
    producer.update_ema()
    d = min(0.999, 2.0 / 11.0)  # warm-up decay after one averaged update
    for e, a, b in zip(producer.ema_generator.parameters(), w1, w2, strict=True):
        torch.testing.assert_close(e, d * a + (1 - d) * b)
        assert (e - b).norm() < 0.25 * (a - b).norm()
    assert all(not p.requires_grad for p in producer.ema.parameters())


def test_ema_converges_to_a_constant_generator() -> None:
    producer = _producer(ema_decay=0.999)
    g = producer.generator
    _set(g, [torch.randn_like(p) for p in g.parameters()])
    producer.update_ema()
    target = [torch.randn_like(p) for p in g.parameters()]
    _set(g, target)
    with torch.no_grad():
        g.bn0.bn.running_mean.fill_(0.3)  # buffers are averaged too (use_buffers=True)
    for _ in range(60):
        producer.update_ema()
    for e, t in zip(producer.ema_generator.parameters(), target, strict=True):
        torch.testing.assert_close(e, t, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(producer.ema_generator.bn0.bn.running_mean, g.bn0.bn.running_mean)
    g.eval()
    producer.ema_generator.eval()
    _, z, c = _batch(3)
    torch.testing.assert_close(producer.ema_generator(z, c), g(z, c), rtol=1e-4, atol=1e-4)


def test_ema_decay_caps_the_warm_up() -> None:
    producer = _producer(ema_decay=0.5)
    g = producer.generator
    for _ in range(30):  # the warm-up decay (1 + n) / (10 + n) now exceeds 0.5
        producer.update_ema()
    before = _params(producer.ema_generator)
    w = [torch.randn_like(p) for p in g.parameters()]
    _set(g, w)
    producer.update_ema()
    for e, a, b in zip(producer.ema_generator.parameters(), before, w, strict=True):
        torch.testing.assert_close(e, 0.5 * a + 0.5 * b)


# --------------------------------------------------------------------------- the min-max step


class ReplayViews(nn.Module):
    """Views whose k-th ``two_views`` call since ``reset()`` always draws the same random parameters."""

    def __init__(self, views: Views) -> None:
        super().__init__()
        self.views, self.calls = views, 0

    def reset(self) -> None:
        self.calls = 0

    def two_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1000 + self.calls)
            self.calls += 1
            return self.views.two_views(x)


@pytest.fixture
def accelerator() -> Iterator[Accelerator]:
    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True, mixed_precision="no")
    AcceleratorState._reset_state(reset_partial_state=True)


def _encoder() -> Encoder:
    torch.manual_seed(1)
    return Encoder(EncoderConfig(width=4, proj_hidden=16, proj_dim=8), 1)


def _cl_loss(views: ReplayViews, encoder: nn.Module, generator: nn.Module, real, z, c) -> float:
    """The step's contrastive loss: real and synthetic views, one encoder pass, [view 1; view 2] rows."""
    views.reset()
    with torch.no_grad():
        fake = generator(z, c)
        v1, v2 = views.two_views(real)
        s1, s2 = views.two_views(fake)
        zz = encoder(torch.cat([v1, s1, v2, s2]))
        return nt_xent_per_view(*zz.chunk(2), temperature=0.5).mean().item()


def _joint_setup(accelerator: Accelerator, monkeypatch: pytest.MonkeyPatch):
    """A cGAN producer (HSG) and the encoder step, with plain SGD so that one step's direction shows."""
    cfg = PipelineConfig(generator=CGanConfig(z_dim=Z, g_channels=8, d_channels=8))
    torch.manual_seed(0)
    producer = CGanProducer(cfg, 1, SIZE, K)
    # realism term off: what is left of G's update comes from the reversed contrastive gradient alone
    monkeypatch.setattr(producer.adversary, "realism", lambda fake, c: fake.sum() * 0.0)
    encoder = _encoder()
    views = ReplayViews(Views(ViewsConfig(), 1, SIZE))
    objective = build_objective(SimCLRConfig(temperature=0.5), encoder, 8, seed=0)
    producer.ctx = TrainContext(
        cfg,
        accelerator,
        1,
        SIZE,
        None,
        None,
        views,
        objective,
        Path("."),
        lambda: encoder,
        lambda r: None,  # type: ignore[arg-type]
    )
    producer.prepare(accelerator)
    assert producer.hsg is not None
    producer.opt_g = torch.optim.SGD(producer.hsg.generator.parameters(), lr=0.05)
    producer.adversary.opt = torch.optim.SGD(producer.discriminator.parameters(), lr=0.05)
    step = EncoderStep(accelerator, encoder, views, torch.optim.SGD(encoder.parameters(), lr=0.05), objective)  # type: ignore[arg-type]

    def joint_step(real, c_real, z, c_fake, *, lambda_hard: float, use_synthetic: bool) -> dict[str, float]:
        contribution = producer.step_terms(
            real, c_real, z, c_fake, lambda_hard=lambda_hard, use_synthetic=use_synthetic
        )
        rec = step(real, contribution)
        producer.after_step(rec)
        return rec

    return joint_step, views, producer.hsg, encoder


def test_joint_step_g_ascends_and_encoder_descends_the_same_loss(
    accelerator: Accelerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    joint_step, views, producer, encoder = _joint_setup(accelerator, monkeypatch)
    real, _, c_real = _batch(8, seed=1)
    _, z, c_fake = _batch(4, seed=2)
    enc0, g0 = copy.deepcopy(encoder), copy.deepcopy(producer.generator)
    before = _cl_loss(views, enc0, g0, real, z, c_fake)

    views.reset()
    rec = joint_step(real, c_real, z, c_fake, lambda_hard=2.0, use_synthetic=True)
    assert rec["loss_cl"] == pytest.approx(before, rel=1e-5)  # the replay reproduces the step's loss
    assert {"hardness_real", "hardness_syn", "loss_d"} <= set(rec) and rec["lambda_hard"] == 2.0

    after_g = _cl_loss(views, enc0, producer.generator, real, z, c_fake)
    after_enc = _cl_loss(views, encoder, g0, real, z, c_fake)
    assert after_g > before + 1e-4  # G's samples got harder for the pre-step encoder
    assert after_enc < before - 1e-4  # the encoder improved on the pre-step samples
    assert int(producer.ema.n_averaged) == 1


def test_joint_step_with_lambda_zero_leaves_g_to_the_realism_term(
    accelerator: Accelerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    joint_step, _, producer, encoder = _joint_setup(accelerator, monkeypatch)
    real, _, c_real = _batch(8, seed=1)
    _, z, c_fake = _batch(4, seed=2)
    g_before, enc_before = _params(producer.generator), _params(encoder)
    joint_step(real, c_real, z, c_fake, lambda_hard=0.0, use_synthetic=True)
    assert all(torch.equal(a, b) for a, b in zip(_params(producer.generator), g_before, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(_params(encoder), enc_before, strict=True))

    g_before = _params(producer.generator)
    rec = joint_step(real, c_real, z, c_fake, lambda_hard=5.0, use_synthetic=False)
    assert "hardness_syn" not in rec
    assert all(torch.equal(a, b) for a, b in zip(_params(producer.generator), g_before, strict=True))


def test_reversal_gives_g_minus_lambda_times_the_plain_gradient() -> None:
    """One backward pass: the encoder gets its descent gradient, G the scaled ascent gradient."""
    lam = 0.7
    views = Views(ViewsConfig(), 1, SIZE)
    real, z, c = _batch(6, seed=4)

    def grads(reverse: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        producer, encoder = _producer(), _encoder()
        fake = producer.generator(z[:3], c[:3])
        x = torch.cat([real, grad_reverse(fake, lam) if reverse else fake])
        torch.manual_seed(11)
        v1, v2 = views.two_views(x)
        out = encoder(torch.cat([v1, v2]))
        nt_xent(*out.chunk(2)).backward()
        return [p.grad.clone() for p in producer.generator.parameters()], [
            p.grad.clone() for p in encoder.parameters()
        ]

    g_rev, e_rev = grads(reverse=True)
    g_plain, e_plain = grads(reverse=False)
    assert sum(g.abs().sum() for g in g_plain) > 0
    for a, b in zip(g_rev, g_plain, strict=True):
        torch.testing.assert_close(a, -lam * b)
    for a, b in zip(e_rev, e_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ema_state_keeps_its_count_and_averaged_models_keys() -> None:
    """A checkpointed EMA resumes with its own update count (the warm-up decay continues where it was),
    and its state dict has the keys torch's AveragedModel wrote (older checkpoints still load)."""
    from torch.optim.swa_utils import AveragedModel

    producer = _producer(ema_decay=0.999)
    g = producer.generator
    for _ in range(3):
        _set(g, [torch.randn_like(p) for p in g.parameters()])
        producer.update_ema()
    state = {k: v.clone() for k, v in producer.ema.state_dict().items()}
    assert set(state) == set(AveragedModel(g, use_buffers=True).state_dict())
    assert int(state["n_averaged"]) == 3
    fresh = _producer(ema_decay=0.999)
    fresh.ema.load_state_dict(state)
    before = _params(fresh.ema_generator)
    w = [torch.randn_like(p) for p in g.parameters()]
    _set(fresh.generator, w)
    fresh.update_ema()
    d = (1.0 + 3) / (10.0 + 3)  # the fourth update's warm-up decay, not the first's copy
    for e, a, b in zip(fresh.ema_generator.parameters(), before, w, strict=True):
        torch.testing.assert_close(e, d * a + (1 - d) * b)
    assert int(fresh.ema.n_averaged) == 4
