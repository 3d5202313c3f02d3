"""Differentiable, per-sample random views (SimCLR recipe, Chen et al. 2020), batched: no loop over samples.

The recipe: a random resized crop (area ``crop_scale``, aspect ratio 3/4..4/3) resized back to the image
size, a horizontal flip, colour jitter (brightness, contrast and, for RGB, saturation and hue, applied with
probability ``jitter_p`` in a random order) and, for RGB, random grayscale. Every parameter is drawn per
sample: torchvision's v2 transforms draw one set per batch call, which would give every image of a batch
the same crop.

Every operation is a batched tensor op, so a view of N images costs the same number of kernel launches for any
N and stays differentiable: hard-sample generation needs the generator's gradient to flow back through the
views (docs/method.md, "HSG with a conditional GAN"). The crop and the flip are one affine ``grid_sample``
(bilinear; a crop is never smaller than the output, so there is no down-sampling to alias); the colour
operations are elementwise. The crop's sampling follows torchvision's ``RandomResizedCrop`` (ten tries of an
area and a log-uniform aspect ratio, the first that fits; else the whole image, ratio-clamped), with
continuous crop sizes and positions (the crop is resampled, so it need not be whole pixels). The parameters
are drawn from the global RNG of the images' device (the jitter's order from the CPU generator), so seeding
torch seeds the views; nothing reads a device value back to the host, so a view never waits for the device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from synthkit.config import ViewsConfig

#: torchvision's and SimCLR's aspect-ratio range of the random resized crop
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
#: tries of torchvision's crop sampling before it falls back to the whole image
CROP_TRIES = 10
#: ITU-R 601-2 luma, as torchvision's and PIL's grayscale
_LUMA = (0.299, 0.587, 0.114)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W luma of N x C x H x W images (C = 1: the images themselves)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _rgb_to_hsv(x: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in turns [0, 1), saturation and value of N x 3 x H x W RGB (elementwise: no reductions)."""
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    s = delta / (maxc + eps)
    inv = 1.0 / (delta + eps)
    rc, gc, bc = (maxc - r) * inv, (maxc - g) * inv, (maxc - b) * inv
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    return torch.remainder(h / 6.0, 1.0), s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    n = torch.arange(5.0, 0.0, -2.0, device=h.device, dtype=h.dtype).view(1, 3, 1, 1)  # 5, 3, 1: no copy
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)
    ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return v.unsqueeze(1) - v.unsqueeze(1) * s.unsqueeze(1) * ramp


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


class Views(nn.Module):
    """Maps a float batch in [0, 1] (N x C x H x W) to one random view per image, differentiably.

    Colour jitter is limited to brightness and contrast for grayscale images; saturation, hue and random
    grayscale are added for RGB.
    """

    def __init__(self, cfg: ViewsConfig, channels: int, size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.channels = channels
        self.size = size
        self.scale = (float(cfg.crop_scale[0]), float(cfg.crop_scale[1]))
        # the jitter's operations, by name, with their factors' ranges (torchvision's ColorJitter)
        self.jitters: list[tuple[str, float, float]] = []
        if cfg.brightness > 0:
            self.jitters.append(("brightness", max(0.0, 1.0 - cfg.brightness), 1.0 + cfg.brightness))
        if cfg.contrast > 0:
            self.jitters.append(("contrast", max(0.0, 1.0 - cfg.contrast), 1.0 + cfg.contrast))
        if channels == 3 and cfg.saturation > 0:
            self.jitters.append(("saturation", max(0.0, 1.0 - cfg.saturation), 1.0 + cfg.saturation))
        if channels == 3 and cfg.hue > 0:
            self.jitters.append(("hue", -cfg.hue, cfg.hue))

    # ------------------------------------------------------------------ parameters
    def crop_boxes(self, n: int, device: torch.device) -> torch.Tensor:
        """N x 4 crop boxes (x0, y0, w, h) in pixels of the size x size image, drawn as torchvision's
        ``RandomResizedCrop.get_params`` draws them, for all samples at once."""
        side = float(self.size)
        area = side * side
        lo, hi = self.scale
        target = area * _uniform(n * CROP_TRIES, lo, hi, device).view(n, CROP_TRIES)
        log_r = _uniform(n * CROP_TRIES, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), device)
        aspect = torch.exp(log_r).view(n, CROP_TRIES)
        w = torch.sqrt(target * aspect)
        h = torch.sqrt(target / aspect)
        fits = (w <= side) & (h <= side) & (w > 0) & (h > 0)
        first = torch.argmax(fits.to(torch.uint8), dim=1, keepdim=True)  # the first try that fits
        any_fit = fits.any(dim=1)
        w = torch.where(any_fit, w.gather(1, first).squeeze(1), torch.full_like(any_fit, side, dtype=w.dtype))
        h = torch.where(any_fit, h.gather(1, first).squeeze(1), torch.full_like(any_fit, side, dtype=h.dtype))
        x0 = torch.rand(n, device=device) * (side - w)
        y0 = torch.rand(n, device=device) * (side - h)
        return torch.stack([x0, y0, w, h], dim=1)

    # ------------------------------------------------------------------ the view
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.dim() != 4
            or x.shape[1] != self.channels
            or x.shape[-1] != self.size
            or x.shape[-2] != self.size
        ):
            raise ValueError(
                f"views expect N x {self.channels} x {self.size} x {self.size} images, got {tuple(x.shape)}"
            )
        n, device, cfg = len(x), x.device, self.cfg
        x = x.float()
        # crop and flip: one affine resampling. Normalised coordinates (align_corners=False): the output's
        # [-1, 1] spans the crop box; a flip mirrors it.
        box = self.crop_boxes(n, device)
        side = float(self.size)
        flip = torch.rand(n, device=device) < cfg.flip_p
        sx = box[:, 2] / side * torch.where(flip, -1.0, 1.0)
        sy = box[:, 3] / side
        cx = (box[:, 0] + box[:, 2] / 2) / side * 2 - 1
        cy = (box[:, 1] + box[:, 3] / 2) / side * 2 - 1
        # the sampling grid, N x size x size x 2, built by broadcasting (affine_grid's batched matmul costs
        # several times the resampling itself on a CPU)
        base = (torch.arange(self.size, device=device, dtype=x.dtype) * 2 + 1) / side - 1  # pixel centres
        gx = (sx[:, None] * base + cx[:, None])[:, None, :].expand(n, self.size, self.size)
        gy = (sy[:, None] * base + cy[:, None])[:, :, None].expand(n, self.size, self.size)
        grid = torch.stack([gx, gy], dim=-1)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = self._jitter(out)
        if self.channels == 3 and cfg.grayscale_p > 0:
            gray = torch.rand(n, device=device) < cfg.grayscale_p
            out = torch.where(gray.view(n, 1, 1, 1), _grayscale(out).expand_as(out), out)
        return out.clamp(0.0, 1.0)

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        """Colour jitter with probability ``jitter_p`` per sample: factors per sample, the operations in a
        random order per batch (torchvision's and kornia's ColorJitter), each result clamped to [0, 1]."""
        if not self.jitters or self.cfg.jitter_p <= 0:
            return x
        n, device = len(x), x.device
        factors = {name: _uniform(n, lo, hi, device).view(n, 1, 1, 1) for name, lo, hi in self.jitters}
        out = x
        for i in torch.randperm(len(self.jitters)).tolist():  # CPU generator: no device read
            name = self.jitters[i][0]
            f = factors[name]
            if name == "brightness":
                out = out * f
            elif name == "contrast":
                mean = _grayscale(out).mean(dim=(1, 2, 3), keepdim=True)
                out = torch.addcmul(mean * (1.0 - f), out, f)  # (out - mean) * f + mean
            elif name == "saturation":
                out = torch.addcmul(_grayscale(out) * (1.0 - f), out, f)  # (out - gray) * f + gray
            else:  # hue: rotate the hue channel by f turns
                h, s, v = _rgb_to_hsv(out)
                out = _hsv_to_rgb(torch.remainder(h + f.view(n, 1, 1), 1.0), s, v)
            out = out.clamp(0.0, 1.0)
        applied = torch.rand(n, device=device) < self.cfg.jitter_p
        return torch.where(applied.view(n, 1, 1, 1), out, x)

    def two_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent views of every image (one call on the doubled batch, then split)."""
        v = self.forward(torch.cat([x, x], dim=0))
        return v[: len(x)], v[len(x) :]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
