"""A (pseudo-)class-conditional diffusers ``UNet2DModel`` trained with ``DDPMScheduler``.

Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (epsilon prediction, the simple
MSE objective); class conditioning through diffusers' learned class embedding (``num_class_embeds``), added
to the timestep embedding. The model and its noise schedule are saved in diffusers' own layout
(``unet/`` and ``scheduler/`` with their ``config.json``), so ``UNet2DModel.from_pretrained(dir / "unet")``
loads it without synthkit.

Example::

    unet = build_unet(DiffusionConfig(), channels=1, size=28, num_classes=10)
    scheduler = build_scheduler(DiffusionConfig())
    loss = diffusion_loss(unet, scheduler, x_in_minus1_1, labels, generator=g)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from synthkit.errors import ModelError
from synthkit.producer_configs.diffusion import DiffusionConfig

UNET_DIR = "unet"
SCHEDULER_DIR = "scheduler"


def build_unet(cfg: DiffusionConfig, channels: int, size: int, num_classes: int) -> UNet2DModel:
    """One resolution level per entry of ``cfg.block_out_channels`` (the last level without downsampling).

    ``num_classes = 0`` builds an unconditional model (no class embedding).
    """
    levels = len(cfg.block_out_channels)
    if size % (2 ** (levels - 1)):
        raise ValueError(
            f"a {levels}-level UNet halves {size} px {levels - 1} times; choose a size divisible by "
            f"{2 ** (levels - 1)} or fewer levels (diffusion.block_out_channels)"
        )
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if cfg.attention:  # self-attention at the coarsest level (and the mid block) only: cheap at 7-8 px
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=cfg.norm_num_groups,
        add_attention=cfg.attention,  # diffusers' default puts attention in the mid block regardless
        num_class_embeds=num_classes or None,
    )


def build_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """The training noise schedule; ``clip_sample`` keeps predicted x0 in the data range [-1, 1]."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
    )


def ddim_scheduler(scheduler_config: dict, steps: int) -> DDIMScheduler:
    """A DDIM scheduler over the same betas, with ``steps`` evenly spaced ("leading") timesteps.

    "leading" spacing (T - T/steps, ..., 0) rather than "trailing" (T - 1, ...): the cosine schedule's last
    timesteps have a signal-to-noise ratio near 0, where an epsilon-predicting model's estimate of x0 is
    noise amplified ~1000x; starting DDIM there locks a clipped random pattern into the sample (measured:
    class-conditional toy samples ignored their class). The final step lands on alpha = 1.
    """
    ddim = DDIMScheduler.from_config(scheduler_config, timestep_spacing="leading", set_alpha_to_one=True)
    ddim.set_timesteps(steps)
    return ddim


def to_model_range(x01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> the model's range [-1, 1]."""
    return x01 * 2.0 - 1.0


def to_image_range(x: torch.Tensor) -> torch.Tensor:
    """The model's range [-1, 1] -> images in [0, 1] (clamped)."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


def diffusion_loss(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The simple DDPM objective: MSE between the true noise and the UNet's prediction at a random t.

    Args:
        unet: the (possibly DDP-wrapped) UNet2DModel.
        scheduler: the training DDPMScheduler (its ``alphas_cumprod``).
        x0: N x C x H x W clean images in [-1, 1].
        labels: N condition ids, or None for an unconditional model.
        generator: the source of t and the noise (on x0's device).
    """
    n = x0.shape[0]
    t = torch.randint(
        0, scheduler.config.num_train_timesteps, (n,), device=x0.device, generator=generator
    ).long()
    noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
    noisy = scheduler.add_noise(x0, noise, t)
    pred = unet(noisy, t, class_labels=labels).sample
    return F.mse_loss(pred.float(), noise.float())


PIPELINE_META = "synthkit.json"
#: the value range of a model's samples when nothing says otherwise: diffusers' convention
DEFAULT_VALUE_RANGE = (-1.0, 1.0)


def save_diffusion(
    unet: UNet2DModel, scheduler: DDPMScheduler, directory: str | Path, meta: dict | None = None
) -> None:
    """A diffusers pipeline directory: ``model_index.json`` (a ``DDPMPipeline``), ``unet/`` (config.json +
    safetensors), ``scheduler/``, and ``synthkit.json`` (``meta``: the value range, what the class ids mean),
    so ``DiffusionPipeline.from_pretrained(directory)`` loads it without synthkit."""
    from diffusers import DDPMPipeline

    directory = Path(directory)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(directory, safe_serialization=True)
    info = {"value_range": list(DEFAULT_VALUE_RANGE), **(meta or {})}
    (directory / PIPELINE_META).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def load_diffusion(directory: str | Path) -> tuple[UNet2DModel, DDPMScheduler]:
    """Load what :func:`save_diffusion` wrote, with plain diffusers; the UNet is in eval mode."""
    found = load_pretrained(directory)
    return found.unet, DDPMScheduler.from_config(found.scheduler_config)


@dataclass
class Pretrained:
    """A diffusers model found on disk: the UNet (eval mode), its noise schedule, where they came from."""

    unet: UNet2DModel
    scheduler_config: dict
    layout: str  # "pipeline" (model_index.json), "unet" (a bare UNet2DModel), "synthkit" (unet/ + scheduler/)
    scheduler_source: str  # where the schedule came from: a file, or "default (generator section)"
    value_range: tuple[float, float]
    meta: dict = field(default_factory=dict)  # synthkit.json, when the directory has one


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object")
    return data


def load_pretrained(directory: str | Path, default_scheduler: DiffusionConfig | None = None) -> Pretrained:
    """A UNet2DModel and its schedule from a local directory; never downloads, never unpickles.

    Layouts: a pipeline directory (``model_index.json`` naming a ``unet`` and a ``scheduler``, as
    ``DDPMPipeline.save_pretrained`` writes), synthkit's own (``unet/`` and ``scheduler/``), or a bare
    ``UNet2DModel.save_pretrained`` directory (``config.json`` + safetensors), whose schedule is a
    ``scheduler_config.json`` next to it, ``../scheduler/``, or else the default: ``DDPMScheduler`` with the
    generator section's ``num_train_timesteps`` and ``beta_schedule`` (epsilon prediction).

    Raises:
        ModelError: nothing loadable there (one line naming the directory and what is missing).
    """
    root = Path(directory)
    if "://" in str(directory) or not root.is_dir():
        raise ModelError(
            f"pretrained model {directory} is not a local directory; synthkit never downloads models: save "
            "it with save_pretrained and pass the directory"
        )
    layout, unet_dir, sched_dir = _layout(root)
    unet = _load_unet(unet_dir)
    scheduler_config, scheduler_source = _scheduler(root, sched_dir, layout, default_scheduler)
    meta = _read_json(root / PIPELINE_META) if (root / PIPELINE_META).is_file() else {}
    value_range = tuple(float(v) for v in meta.get("value_range", DEFAULT_VALUE_RANGE))
    if value_range != DEFAULT_VALUE_RANGE:
        raise ModelError(
            f"{root}: the model's samples are in {list(value_range)}; synthkit's sampler assumes diffusers' "
            f"{list(DEFAULT_VALUE_RANGE)}"
        )
    return Pretrained(unet, dict(scheduler_config), layout, scheduler_source, value_range, meta)  # type: ignore[arg-type]


def _layout(root: Path) -> tuple[str, Path, Path]:
    """Which layout ``root`` has: (layout, the UNet's directory, where its schedule would be)."""
    if (root / "model_index.json").is_file():
        index = _read_json(root / "model_index.json")
        if not isinstance(index.get("unet"), list) or index["unet"][-1:] != ["UNet2DModel"]:
            raise ModelError(f"{root}/model_index.json names no UNet2DModel (unet: {index.get('unet')!r})")
        return "pipeline", root / UNET_DIR, root / SCHEDULER_DIR
    if (root / UNET_DIR / "config.json").is_file():
        return "synthkit", root / UNET_DIR, root / SCHEDULER_DIR
    if (root / "config.json").is_file():
        sched_dir = root if (root / "scheduler_config.json").is_file() else root.parent / SCHEDULER_DIR
        return "unet", root, sched_dir
    raise ModelError(
        f"{root} holds no diffusers model: expected model_index.json (a pipeline), unet/config.json, or "
        "the config.json of a UNet2DModel"
    )


def _load_unet(unet_dir: Path) -> UNet2DModel:
    """The UNet2DModel of ``unet_dir`` (safetensors only, local files only), in eval mode."""
    weights = unet_dir / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise ModelError(
            f"{unet_dir} has no diffusion_pytorch_model.safetensors; synthkit loads safetensors only "
            "(save with safe_serialization=True)"
        )
    config = _read_json(unet_dir / "config.json")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ModelError(f"{unet_dir} holds a {config.get('_class_name')}, not a UNet2DModel")
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise ModelError(f"cannot load the UNet in {unet_dir}: {type(e).__name__}: {e}") from e
    return unet.eval()


def _scheduler(root: Path, sched_dir: Path, layout: str, default: DiffusionConfig | None) -> tuple[dict, str]:
    """The noise schedule's config and where it came from: ``sched_dir``'s file, or the default (a bare UNet,
    or when the caller gives one); it must predict epsilon."""
    if (sched_dir / "scheduler_config.json").is_file():
        config = _read_json(sched_dir / "scheduler_config.json")
        source = str(sched_dir / "scheduler_config.json")
    elif default is not None or layout == "unet":
        config = dict(build_scheduler(default or DiffusionConfig()).config)
        source = "default (generator.num_train_timesteps, generator.beta_schedule)"
    else:
        raise ModelError(f"{root} has no scheduler ({sched_dir / 'scheduler_config.json'} is missing)")
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise ModelError(
            f"{root}: the scheduler predicts {config.get('prediction_type')!r}; synthkit's sampler "
            "and guidance need an epsilon-predicting model"
        )
    return config, source
