"""The conditional UNet: shapes at 28/32 px, the DDPM loss, and a save that plain diffusers reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from synthkit.config import ConfigError, load_pipeline
from synthkit.generators.diffusion import (
    build_scheduler,
    build_unet,
    diffusion_loss,
    load_diffusion,
    save_diffusion,
)
from synthkit.producer_configs.diffusion import DiffusionConfig

TOY = DiffusionConfig(block_out_channels=(8, 16, 16), norm_num_groups=4, num_train_timesteps=50)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (1, 16)])
def test_three_levels_fit_small_images(channels: int, size: int) -> None:
    unet = build_unet(TOY, channels, size, num_classes=10)
    x = torch.randn(2, channels, size, size)
    out = unet(x, torch.tensor([3, 40]), class_labels=torch.tensor([0, 9])).sample
    assert out.shape == x.shape


def test_size_that_cannot_be_halved_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        build_unet(TOY, 1, 30, num_classes=0)


def test_class_embedding_changes_the_prediction() -> None:
    torch.manual_seed(0)
    unet = build_unet(TOY, 1, 16, num_classes=2).eval()
    torch.nn.init.normal_(unet.class_embedding.weight)
    x, t = torch.randn(1, 1, 16, 16), torch.tensor([10])
    a = unet(x, t, class_labels=torch.tensor([0])).sample
    b = unet(x, t, class_labels=torch.tensor([1])).sample
    assert not torch.allclose(a, b)


def test_saved_model_reloads_with_plain_diffusers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    unet = build_unet(TOY, 1, 16, num_classes=3).eval()
    scheduler = build_scheduler(TOY)
    save_diffusion(unet, scheduler, tmp_path / "d")
    plain = UNet2DModel.from_pretrained(tmp_path / "d" / "unet").eval()
    plain_sched = DDPMScheduler.from_pretrained(tmp_path / "d" / "scheduler")
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([5, 30]), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(unet(x, t, class_labels=c).sample, plain(x, t, class_labels=c).sample)
    assert plain.config.num_class_embeds == 3
    assert torch.equal(plain_sched.alphas_cumprod, scheduler.alphas_cumprod)
    reloaded, _ = load_diffusion(tmp_path / "d")
    assert not reloaded.training


def test_diffusion_loss_decreases() -> None:
    torch.manual_seed(0)
    unet = build_unet(TOY, 1, 8, num_classes=0)
    scheduler = build_scheduler(TOY)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    x0 = torch.zeros(16, 1, 8, 8) - 1.0
    losses = []
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        loss = diffusion_loss(unet, scheduler, x0, None, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_config_errors_name_the_key() -> None:
    # the diffusion producer's keys live in the generator section, under generator.kind=diffusion
    with pytest.raises(ConfigError, match="generator.norm_num_groups"):
        DiffusionConfig(block_out_channels=(12, 16), norm_num_groups=8)
    with pytest.raises(ConfigError, match="generator.branch_mode"):
        load_pipeline(None, ["--generator.kind=diffusion", "--generator.branch_mode=swap"])
    with pytest.raises(ConfigError, match="generator.t_split_end"):
        load_pipeline(None, ["--generator.kind=diffusion", "--generator.t_split_end=1.5"])
