"""The trainers' collaborators on their own: D's side of the cGAN game, a run's conditions, and what a trainer
publishes, read back by its frozen sampler."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from synthkit.config import HPGConfig, PipelineConfig, from_dict
from synthkit.errors import CheckpointError
from synthkit.generators.cgan import build_cgan
from synthkit.generators.diffusion import build_unet
from synthkit.producer_configs.cgan import CGanConfig
from synthkit.producers.adversary import Adversary
from synthkit.producers.base import TrainContext
from synthkit.producers.cgan import CGanProducer
from synthkit.producers.conditions import RunConditions
from synthkit.samplers.cgan import CGanSampler
from synthkit.samplers.conditions import Conditions
from synthkit.samplers.diffusion import DIFFUSION_DIR, DiffusionSampler
from synthkit.weights import save_state_dict

SIZE, Z, K = 8, 8, 2
GEN = CGanConfig(z_dim=Z, g_channels=8, d_channels=8)


@pytest.fixture
def accelerator() -> Iterator[Accelerator]:
    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True, mixed_precision="no")
    AcceleratorState._reset_state(reset_partial_state=True)


def _ctx(cfg: PipelineConfig, accelerator: Accelerator, run_dir: Path = Path(".")) -> TrainContext:
    return TrainContext(
        cfg,
        accelerator,
        1,
        SIZE,
        None,
        None,
        None,
        None,
        run_dir,
        lambda: None,
        lambda r: None,  # type: ignore[arg-type]
    )


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def test_the_adversary_steps_d_alone_and_its_realism_term_trains_g_alone(accelerator: Accelerator) -> None:
    torch.manual_seed(0)
    gen, disc = build_cgan(GEN, 1, SIZE, K)
    adversary = Adversary(disc, GEN)
    adversary.prepared(disc, torch.optim.SGD(disc.parameters(), lr=0.1))
    real, c = torch.rand(4, 1, SIZE, SIZE), torch.tensor([0, 1, 1, 0])
    fake = gen(torch.randn(4, Z), c)
    before = [p.detach().clone() for p in disc.parameters()]
    loss_d = adversary.step(accelerator, real, c, fake, c)
    assert loss_d.ndim == 0 and torch.isfinite(loss_d)
    assert any(not torch.equal(a, b) for a, b in zip(before, disc.parameters(), strict=True))  # D moved
    assert all(p.grad is None for p in gen.parameters())  # the fakes were detached for D's step
    adversary.opt.zero_grad(set_to_none=True)
    adversary.realism(fake, c).backward()
    assert all(p.grad is None for p in disc.parameters())  # D frozen for the realism term
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    assert all(p.requires_grad for p in disc.parameters())  # and trainable again afterwards


def test_run_conditions_look_up_a_batch_and_draw_from_the_frequencies(accelerator: Accelerator) -> None:
    cfg = PipelineConfig(generator=GEN)
    cond = Conditions(torch.tensor([1, 0, 1, 1]), K, "labels")
    conditions = RunConditions(cfg, _ctx(cfg, accelerator), K)
    images = torch.zeros(2, 1, SIZE, SIZE)
    assert torch.equal(conditions.of_batch(cond, torch.tensor([3, 1]), images), torch.tensor([1, 0]))
    torch.manual_seed(0)
    drawn = conditions.draw(cond, 2000)
    assert drawn is not None and drawn.shape == (2000,)
    assert abs(float((drawn == 1).float().mean()) - 0.75) < 0.05  # condition 1 holds 3 of the 4 images
    unconditional = RunConditions(cfg, _ctx(cfg, accelerator), 0)
    assert unconditional.of_batch(cond, torch.tensor([0]), images) is None
    assert unconditional.draw(cond, 4) is None


def test_a_published_cgan_reads_back_as_its_sampler_and_a_replaced_file_is_refused(tmp_path: Path) -> None:
    cfg = PipelineConfig(generator=GEN, hpg=HPGConfig(enabled=True))
    torch.manual_seed(0)
    producer = CGanProducer(cfg, 1, SIZE, K)
    producer.conditions = Conditions(torch.tensor([0, 1, 1]), K, "kmeans")
    producer.generator_steps = 5
    record = producer.publish(tmp_path)
    assert record["kind"] == "cgan" and record["generator_steps"] == 5
    assert set(record["hashes"]) == {"generator_ema", "generator_a_ema", "generator_b_ema", "discriminator"}
    assert record["conditions"] == {"num_classes": K, "source": "kmeans"}
    back = CGanSampler.load(cfg, tmp_path, json.loads(json.dumps(record)))
    assert back.generator is not None and back.pair is not None and back.discriminator is not None
    assert _same(back.generator, producer.hsg.ema_generator)  # type: ignore[union-attr]
    assert _same(back.pair[1], producer.pairs.ema_b.module)  # type: ignore[union-attr]
    assert _same(back.discriminator, producer.discriminator)
    assert back.generator_steps == 5 and back.conditions is not None
    assert torch.equal(back.conditions.labels, torch.tensor([0, 1, 1]))
    save_state_dict(producer.pairs.ema_a.module, tmp_path / "generator_b_ema.safetensors")  # type: ignore[union-attr]
    with pytest.raises(CheckpointError):
        CGanSampler.load(cfg, tmp_path, record)


def test_a_published_diffusion_model_reads_back_with_its_conditions_and_pools(tmp_path: Path) -> None:
    cfg = from_dict(
        {
            "generator": {
                "kind": "diffusion",
                "block_out_channels": [8, 16, 16],
                "norm_num_groups": 4,
                "num_train_timesteps": 50,
            },
            "hpg": {"enabled": True},
        }
    )
    torch.manual_seed(0)
    sampler = DiffusionSampler(cfg, 1, SIZE, 3, unet=build_unet(cfg.generator, 1, SIZE, 3))
    sampler.conditions = Conditions(torch.tensor([0, 1, 2, 2]), 3, "kmeans")
    sampler.trained_steps, sampler.pools = 7, [{"epoch": 2, "pool_t_split": 0.5}]
    record = {"kind": "diffusion", **sampler.publish(tmp_path)}
    meta = json.loads((tmp_path / DIFFUSION_DIR / "synthkit.json").read_text())
    assert meta["class_ids"]["source"] == "kmeans" and meta["class_ids"]["num_classes"] == 3
    back = DiffusionSampler.load(cfg, tmp_path, json.loads(json.dumps(record)))
    assert _same(back.unet, sampler.unet)
    assert back.trained_steps == 7 and back.pools == sampler.pools and back.num_classes == 3
    assert back.conditions is not None and torch.equal(back.conditions.labels, sampler.conditions.labels)
    with pytest.raises(CheckpointError, match="does not hold the UNet this run recorded"):
        DiffusionSampler.load(cfg, tmp_path, {**record, "hashes": {"unet_ema": "0" * 64}})
