"""DDIM sampling with conditions, encoder guidance and branched pairs, on toy models."""

from __future__ import annotations

import pytest
import torch

from synthkit.config import EncoderConfig, SimCLRConfig, ViewsConfig
from synthkit.data.views import Views
from synthkit.encoders.model import Encoder
from synthkit.generators.diffusion import build_scheduler, build_unet, diffusion_loss
from synthkit.losses.nt_xent import nt_xent
from synthkit.objectives.base import build_objective
from synthkit.objectives.scoring import Scorer
from synthkit.producer_configs.diffusion import DiffusionConfig
from synthkit.samplers.diffusion_sampling import (
    Guidance,
    ddim_pairs,
    ddim_sample,
    t_split_at,
)

TOY = DiffusionConfig(block_out_channels=(8, 16, 16), norm_num_groups=4, num_train_timesteps=100)
SIZE = 8


@pytest.fixture(scope="module")
def black_white() -> tuple[torch.nn.Module, dict]:
    """A toy conditional model trained on two trivially distinct classes: 0 = all black, 1 = all white."""
    torch.manual_seed(0)
    unet = build_unet(TOY, 1, SIZE, num_classes=2)
    scheduler = build_scheduler(TOY)
    opt = torch.optim.Adam(unet.parameters(), lr=1e-2)
    labels = torch.tensor([0, 1] * 16)
    x0 = (labels.float() * 2 - 1).view(-1, 1, 1, 1).expand(-1, 1, SIZE, SIZE).contiguous()
    g = torch.Generator().manual_seed(0)
    for _ in range(300):  # the UNet has no mid-block attention (diffusion.attention: false)
        loss = diffusion_loss(unet, scheduler, x0, labels, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return unet.eval(), dict(scheduler.config)


@pytest.fixture(scope="module")
def random_model() -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(1)
    return build_unet(TOY, 1, SIZE, num_classes=0).eval(), dict(build_scheduler(TOY).config)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    """A toy encoder after a few SimCLR steps (at random init every image looks alike to it)."""
    torch.manual_seed(2)
    enc = Encoder(EncoderConfig(width=8, proj_hidden=16, proj_dim=8), 1)
    views = Views(ViewsConfig(), 1, SIZE)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    data = torch.rand(64, 1, SIZE, SIZE)
    for _ in range(30):
        v1, v2 = views.two_views(data)
        loss = nt_xent(enc(v1), enc(v2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return enc.eval()


def _guidance(encoder: Encoder, scale: float) -> Guidance:
    reference = torch.rand(16, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    objective = build_objective(SimCLRConfig(temperature=0.5), encoder, 8, seed=0)
    return Guidance(Scorer(encoder, Views(ViewsConfig(), 1, SIZE), objective, reference), scale)


def test_conditional_samples_respect_labels(black_white) -> None:
    """Same noise, different label: the 'white' sample is brighter than the 'black' one, every time."""
    unet, sched = black_white
    n = 16
    black = ddim_sample(
        unet, sched, torch.zeros(n, dtype=torch.long), generator=torch.Generator().manual_seed(0)
    )
    white = ddim_sample(
        unet, sched, torch.ones(n, dtype=torch.long), generator=torch.Generator().manual_seed(0)
    )
    gap = white.flatten(1).mean(1) - black.flatten(1).mean(1)
    assert (gap > 0.05).all() and gap.mean() > 0.2


def test_same_seed_same_samples_other_seed_other_samples(random_model) -> None:
    unet, sched = random_model

    def draw(seed: int, eta: float) -> torch.Tensor:
        return ddim_sample(
            unet, sched, None, n=4, generator=torch.Generator().manual_seed(seed), steps=5, eta=eta
        )

    assert torch.equal(draw(0, 0.5), draw(0, 0.5))
    assert not torch.equal(draw(0, 0.5), draw(1, 0.5))
    assert not torch.equal(draw(0, 0.0), draw(0, 1.0))


def test_guidance_scale_zero_reproduces_unguided_samples_exactly(random_model, encoder) -> None:
    unet, sched = random_model
    kw = {"n": 6, "steps": 6, "eta": 0.3}
    plain = ddim_sample(unet, sched, None, generator=torch.Generator().manual_seed(3), **kw)
    zero = ddim_sample(
        unet, sched, None, generator=torch.Generator().manual_seed(3), guidance=_guidance(encoder, 0.0), **kw
    )
    assert torch.equal(plain, zero)


def test_guidance_makes_samples_harder_for_the_encoder(random_model, encoder) -> None:
    unet, sched = random_model
    kw = {"n": 16, "steps": 6}
    plain = ddim_sample(unet, sched, None, generator=torch.Generator().manual_seed(4), **kw)
    gd = _guidance(encoder, 0.1)
    guided = ddim_sample(unet, sched, None, generator=torch.Generator().manual_seed(4), guidance=gd, **kw)
    assert guided.min() >= 0 and guided.max() <= 1
    assert not torch.equal(guided, plain)

    def hardness(x: torch.Tensor) -> float:
        return float(gd.scorer.hardness(x, seed=9).mean())

    assert hardness(guided) > hardness(plain)


@pytest.mark.parametrize("mode", ["noise", "sdedit"])
def test_branching_at_t_split_zero_gives_identical_pairs(random_model, mode: str) -> None:
    unet, sched = random_model
    a, b = ddim_pairs(
        unet, sched, None, n=4, t_split=0.0, mode=mode, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["noise", "sdedit"])
def test_pairs_drift_apart_as_t_split_grows(random_model, mode: str) -> None:
    unet, sched = random_model
    dist = []
    for t_split in (0.0, 0.3, 1.0):
        a, b = ddim_pairs(
            unet,
            sched,
            None,
            n=16,
            t_split=t_split,
            steps=10,
            mode=mode,
            generator=torch.Generator().manual_seed(5),
        )
        dist.append(float((a - b).abs().mean()))
    assert dist[0] == 0.0 < dist[1] < dist[2]


def test_pairs_keep_their_condition(black_white) -> None:
    unet, sched = black_white
    kw = {"t_split": 0.5, "steps": 10}
    a0, b0 = ddim_pairs(
        unet, sched, torch.zeros(8, dtype=torch.long), generator=torch.Generator().manual_seed(0), **kw
    )
    a1, b1 = ddim_pairs(
        unet, sched, torch.ones(8, dtype=torch.long), generator=torch.Generator().manual_seed(0), **kw
    )
    assert not torch.equal(a0, b0)
    assert ((a1 - a0).flatten(1).mean(1) > 0.05).all() and ((b1 - b0).flatten(1).mean(1) > 0.05).all()


def test_t_split_schedule_grows_over_training() -> None:
    cfg = DiffusionConfig(t_split_start=0.1, t_split_end=0.5)
    assert t_split_at(cfg, 0.0) == pytest.approx(0.1)
    assert t_split_at(cfg, 0.5) == pytest.approx(0.3)
    assert t_split_at(cfg, 2.0) == pytest.approx(0.5)
