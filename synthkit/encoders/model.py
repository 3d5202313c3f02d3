"""The contrastive encoder f = g . h: backbone h plus projection head g (SimCLR's MLP head)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from synthkit.config import EncoderConfig
from synthkit.encoders.backbones import build_backbone, resolve_stem
from synthkit.errors import CheckpointError, ModelError
from synthkit.provenance import state_dict_hash
from synthkit.weights import load_state_dict


class ProjectionHead(nn.Sequential):
    """Linear-BN-ReLU-Linear, as in SimCLR (Chen et al., 2020)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
        )


class Encoder(nn.Module):
    """Inputs are images in [0, 1]; they are centred to [-1, 1] inside, so views stay in image space.

    ``image_size``: the side of the images it will see, which ``encoder.stem: auto`` picks a ResNet's stem
    by (None: the small stem). ``stem``: the stem a run recorded (``final.json``), which overrides both.
    ``self.stem`` is the stem built (``small``/``standard``; None for a backbone without that choice).
    """

    def __init__(
        self, cfg: EncoderConfig, in_channels: int, image_size: int | None = None, *, stem: str | None = None
    ) -> None:
        super().__init__()
        self.stem = stem or resolve_stem(cfg.backbone, cfg.stem, cfg.small_stem, image_size)
        self.backbone = build_backbone(
            cfg.backbone,
            in_channels,
            cfg.width,
            stem=self.stem,
            small_stem=cfg.small_stem,
            has_weights=cfg.weights is not None,
        )
        self.head = ProjectionHead(self.backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        self.in_channels = in_channels

    @property
    def feature_dim(self) -> int:
        return self.backbone.out_dim

    def features(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """h(x): the representation that is evaluated and clustered.

        ``x`` may be a list of batches, treated as their concatenation (see ``backbones``).
        """
        if isinstance(x, torch.Tensor):
            return self.backbone(x * 2.0 - 1.0)
        return self.backbone([chunk * 2.0 - 1.0 for chunk in x])

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """f(x) = g(h(x)): the projection the contrastive loss sees."""
        return self.head(self.features(x))


def load_encoder_weights(encoder: Encoder, path: str | Path) -> str:
    """Start ``encoder`` from a local safetensors file; return the file's content hash.

    The file holds a whole encoder (``backbone.*`` and ``head.*`` keys, e.g. another run's
    ``final/encoder.safetensors``) or a backbone alone (its own keys, or prefixed ``backbone.``). Every
    tensor must fit: a missing, unexpected or differently shaped tensor is a one-line ModelError.
    """
    path = Path(path)
    try:
        state = load_state_dict(path)
    except CheckpointError as e:
        raise ModelError(f"encoder.weights: {e}") from e
    if any(k.startswith("head.") for k in state):
        target, what = encoder, "the whole encoder"
    else:
        target, what = encoder.backbone, "the backbone"
        if all(k.startswith("backbone.") for k in state):
            state = {k[len("backbone.") :]: v for k, v in state.items()}
    mine = target.state_dict()
    missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    wrong = [k for k in mine if k in state and tuple(state[k].shape) != tuple(mine[k].shape)]
    if missing or extra or wrong:
        detail = (
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else
            f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else
            f"{wrong[0]} is {tuple(state[wrong[0]].shape)} in the file, {tuple(mine[wrong[0]].shape)} here"
        )  # fmt: skip
        raise ModelError(f"encoder.weights={path} does not fit {what} (encoder.backbone/width): {detail}")
    target.load_state_dict(state)
    return state_dict_hash(state)


@torch.no_grad()
def eval_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """h(x) of one batch (floats in [0, 1]) in eval mode, without gradients; the mode is restored."""
    was = encoder.training
    encoder.eval()
    try:
        return encoder.features(x)
    finally:
        encoder.train(was)


@torch.no_grad()
def extract_features(
    encoder: Encoder, images: torch.Tensor, batch_size: int = 512, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Backbone features of uint8 or [0, 1] float images, in eval mode, batched; returns float32 on CPU."""
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device)
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            out.append(encoder.features(x).float().cpu())
    finally:
        encoder.train(was_training)
    if not out:
        return torch.empty(0, encoder.feature_dim)
    return torch.cat(out)
