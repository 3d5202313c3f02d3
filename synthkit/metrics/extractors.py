"""Feature extractors for the audit: which network's features the metrics are computed in.

Scores such as FID are only comparable within one feature space, so every extractor has a stable ``ident``
and a content ``sha256`` that the audit writes beside each score. The registry:

- ``encoder``: the backbone h of a finished synthkit run (``RUN_DIR/final``, checksummed; the hash is the
  encoder's weight hash from ``final.json``);
- ``classifier``: a small in-domain classifier (the 4-block conv net plus a linear layer) trained on
  labeled real data by ``synthkit audit train-extractor``; its penultimate features are used. Saved as
  ``classifier.safetensors`` + ``extractor.json`` (the weight hash, the file's sha256, test accuracy);
- ``inception``: torchvision's Inception-v3 pool features (2048-D) from a **local** weights file
  (safetensors, or a ``torch.save`` state dict read with ``weights_only=True``); nothing is downloaded;
- ``pixels``: the raw pixels in [0, 1], a sanity baseline that needs no network.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from synthkit.config import DataConfig
from synthkit.data.sources import load_source, resize_images  # one resize for sources and audit
from synthkit.encoders.backbones import build_backbone
from synthkit.errors import ExtractorError
from synthkit.progress import Phase
from synthkit.provenance import created_by, sha256_file, state_dict_hash
from synthkit.registry import EXTRACTORS
from synthkit.run_files.final import load_final

__all__ = ["EXTRACTORS", "ExtractorError", "FeatureExtractor", "load_extractor", "train_classifier"]
CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_META = "extractor.json"
CLASSIFIER_FORMAT = "synthkit-audit-classifier"
INCEPTION_SIZE = 299
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

logger = logging.getLogger(__name__)

# Extractor quality, chance-corrected: (accuracy - 1/C) / (1 - 1/C), 0 at chance and 1 when perfect. At least
# halfway from chance to perfect (0.55 for 10 classes) is a usable feature space; below a fifth of the way
# (0.28 for 10 classes) distances barely follow the classes, so FID and PRDC mostly measure noise. The audit's
# ``extractor`` gate and ``train-extractor``'s warning read these.
EXTRACTOR_PASS, EXTRACTOR_FAIL = 0.5, 0.2
# train_classifier's default length: at least this many epochs and this many optimizer steps, with batches of
# at most an eighth of the data (a 600-image folder: batches of 75, 63 epochs). The old default of 3 epochs
# of 256 was 9 steps on a 600-image folder and gave a near-chance classifier (test accuracy 0.16).
MIN_EPOCHS, MIN_STEPS, MAX_BATCH, MIN_BATCH = 10, 500, 256, 32


def chance_corrected(accuracy: float, num_classes: int) -> float:
    """(accuracy - 1/C) / (1 - 1/C): 0 at chance, 1 when perfect."""
    chance = 1.0 / max(num_classes, 2)
    return (accuracy - chance) / (1.0 - chance)


def default_batch_size(n: int) -> int:
    """Batch size of :func:`train_classifier` when none is given: 256, at most an eighth of ``n`` (at least
    32), so that a small data set still gives several steps per epoch."""
    return min(MAX_BATCH, max(MIN_BATCH, n // 8))


def default_epochs(n: int, batch_size: int) -> int:
    """Epochs of :func:`train_classifier` when none are given: ``MIN_EPOCHS``, more for a small data set so
    that training takes at least ``MIN_STEPS`` optimizer steps."""
    per_epoch = max(1, math.ceil(n / batch_size))
    return max(MIN_EPOCHS, math.ceil(MIN_STEPS / per_epoch))


class DomainClassifier(nn.Module):
    """A conv net classifier of real images; its penultimate (backbone) output is the feature."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.backbone = build_backbone("convnet", in_channels, width)
        self.fc = nn.Linear(self.backbone.out_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x * 2.0 - 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@dataclass
class FeatureExtractor:
    """A network (or none) mapping uint8 ``N x C x H x W`` images to ``N x feature_dim`` float32 features.

    ``size`` / ``channels``: what the network takes; other images are converted explicitly (antialiased
    bilinear resize, 601 luma or repeated gray) by :meth:`prepare`, and the audit records that it did.
    """

    kind: str
    ident: str
    sha256: str
    size: int | None
    channels: int | None
    feature_dim: int
    module: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.ident,
            "sha256": self.sha256,
            "feature_dim": self.feature_dim,
            "input": {"size": self.size, "channels": self.channels},
            **self.info,
        }

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        size = self.size or images.shape[-1]
        if images.shape[-2] != images.shape[-1] and self.size is None:
            raise ExtractorError(
                f"the {self.kind} extractor needs square images, got {tuple(images.shape[-2:])}"
            )
        return resize_images(images, size, self.channels)

    @torch.no_grad()
    def features(
        self, images: torch.Tensor, batch_size: int = 512, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Features of uint8 images (already :meth:`prepare` d), batched, in eval mode, float32.

        ``device``: where the network runs and the features stay (default: the CPU). The module is moved
        there once; the images go batch by batch, so only one batch of floats is ever on the device.
        """
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if self.module is not None:
            self.module.to(dev)
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size].to(dev).float() / 255.0
            out.append(self._forward(x).float().reshape(x.shape[0], -1))
        return torch.cat(out) if out else torch.empty(0, self.feature_dim, device=dev)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "pixels":
            return x
        assert self.module is not None
        self.module.eval()
        if self.kind == "inception":
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", antialias=True)
            mean = torch.tensor(_IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(_IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
            return self.module((x - mean) / std)
        return self.module.features(x)


def pixels_extractor(size: int, channels: int) -> FeatureExtractor:
    return FeatureExtractor(
        kind="pixels",
        ident=f"pixels:{size}x{size}x{channels}",
        sha256="none",
        size=size,
        channels=channels,
        feature_dim=size * size * channels,
        info={"note": "raw pixels in [0, 1]; a sanity baseline, not a perceptual space"},
    )


def encoder_extractor(run_dir: str | os.PathLike[str]) -> FeatureExtractor:
    art = load_final(run_dir)
    digest = art.meta["hashes"]["encoder"]
    return FeatureExtractor(
        kind="encoder",
        ident=f"encoder:{digest[:12]}",
        sha256=digest,
        size=art.cfg.data.size,
        channels=art.encoder.in_channels,
        feature_dim=art.encoder.feature_dim,
        module=art.encoder,
        info={"run_dir": str(Path(run_dir).resolve()), "backbone": art.cfg.encoder.backbone},
    )


def _read_classifier_meta(directory: Path) -> dict[str, Any]:
    path = directory / CLASSIFIER_META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ExtractorError(
            f"{directory} holds no trained classifier ({CLASSIFIER_META} is missing); train one with "
            "`synthkit audit train-extractor --data NAME --out DIR`"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ExtractorError(f"cannot read {path}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != CLASSIFIER_FORMAT:
        raise ExtractorError(f"{path} is not a {CLASSIFIER_FORMAT} file")
    return meta


def classifier_extractor(directory: str | os.PathLike[str]) -> FeatureExtractor:
    """Load a classifier written by :func:`train_classifier`, after checking the weights' sha256."""
    directory = Path(directory)
    meta = _read_classifier_meta(directory)
    weights = directory / CLASSIFIER_WEIGHTS
    if not weights.is_file():
        raise ExtractorError(f"{weights} is missing")
    if sha256_file(weights) != meta["file_sha256"]:
        raise ExtractorError(f"{weights} does not match the sha256 in {CLASSIFIER_META}: corrupt or replaced")
    model = DomainClassifier(meta["channels"], meta["num_classes"], meta["width"])
    try:
        state = load_file(str(weights))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError) as exc:
        raise ExtractorError(f"cannot load {weights}: {exc}") from exc
    model.eval()
    return FeatureExtractor(
        kind="classifier",
        ident=f"classifier:{meta['sha256'][:12]}",
        sha256=meta["sha256"],
        size=meta["size"],
        channels=meta["channels"],
        feature_dim=model.backbone.out_dim,
        module=model,
        info={
            "path": str(directory.resolve()),
            "data": meta["data"],
            "test_accuracy": meta["test_accuracy"],
            "num_classes": meta["num_classes"],
            "classes": meta.get("classes"),
        },
    )


def inception_extractor(weights: str | os.PathLike[str] | None) -> FeatureExtractor:
    """torchvision Inception-v3 (pool features, 2048-D) from a local weights file; never downloads."""
    from torchvision.models import inception_v3

    if weights is None:
        raise ExtractorError(
            "the inception extractor needs a local weights file (--inception-weights PATH: torchvision's "
            "inception_v3 state dict as .safetensors or .pth); synthkit never downloads weights"
        )
    path = Path(weights)
    if not path.is_file():
        raise ExtractorError(f"Inception weights {path} not found; synthkit never downloads weights")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one clear message
        raise ExtractorError(f"cannot read Inception weights {path}: {type(exc).__name__}: {exc}") from exc
    model = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise ExtractorError(
            f"{path} is not a torchvision inception_v3 state dict: {str(exc)[:200]}"
        ) from exc
    model.fc = nn.Identity()
    model.eval()
    digest = sha256_file(path)
    return FeatureExtractor(
        kind="inception",
        ident=f"inception:{digest[:12]}",
        sha256=digest,
        size=None,
        channels=3,
        feature_dim=2048,
        module=model,
        info={"path": str(path.resolve())},
    )


def load_extractor(
    kind: str,
    *,
    encoder_run: str | os.PathLike[str] | None = None,
    classifier: str | os.PathLike[str] | None = None,
    inception_weights: str | os.PathLike[str] | None = None,
    pixels_shape: tuple[int, int] | None = None,
) -> FeatureExtractor:
    """Build the extractor ``kind`` (one of :data:`EXTRACTORS`) from the argument it needs."""
    if kind == "encoder":
        if encoder_run is None:
            raise ExtractorError("the encoder extractor needs a run directory (--encoder RUN_DIR)")
        return encoder_extractor(encoder_run)
    if kind == "classifier":
        if classifier is None:
            raise ExtractorError(
                "the classifier extractor needs --classifier DIR (from audit train-extractor)"
            )
        return classifier_extractor(classifier)
    if kind == "inception":
        return inception_extractor(inception_weights)
    if kind == "pixels":
        if pixels_shape is None:
            raise ExtractorError("the pixels extractor needs the image size and channels")
        return pixels_extractor(*pixels_shape)
    raise ExtractorError(f"unknown extractor {kind!r} (known: {', '.join(EXTRACTORS)})")


def train_classifier(
    data: DataConfig,
    out_dir: str | os.PathLike[str],
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float = 1e-3,
    width: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Train :class:`DomainClassifier` on the labeled train split of ``data``; publish it in ``out_dir``.

    Random crops (pad 2) and horizontal flips, Adam with cosine decay, cross-entropy; test accuracy on the
    test split is recorded. ``out_dir`` is written to a temp directory and renamed when complete.
    ``epochs`` / ``batch_size``: None for :func:`default_epochs` (at least 10 epochs and 500 steps) and
    :func:`default_batch_size` (256, at most an eighth of the data). A classifier whose
    chance-corrected test accuracy is below ``EXTRACTOR_PASS`` is recorded as ``weak`` and logged as a
    warning: the audit would flag it.

    Returns:
        The ``extractor.json`` contents (``sha256``, ``test_accuracy``, ...).
    """
    out = Path(out_dir)
    if (out / CLASSIFIER_META).exists():
        raise ExtractorError(
            f"{out} already holds a trained classifier; remove it or choose another directory"
        )
    train_set, test_set = load_source(data, "train"), load_source(data, "test")
    if train_set.labels is None or test_set.labels is None:
        raise ExtractorError(f"data source {data.name!r} has no labels; an in-domain classifier needs them")
    num_classes = int(max(train_set.labels.max(), test_set.labels.max())) + 1
    channels = train_set.images.shape[1]
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DomainClassifier(channels, num_classes, width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(train_set)
    if batch_size is None:
        batch_size = default_batch_size(n)
    if epochs is None:
        epochs = default_epochs(n, batch_size)
    steps = epochs * math.ceil(n / batch_size)
    logger.info(
        "classifier: %d epochs of batches of %d (%d steps) on %d images, %d classes",
        epochs,
        batch_size,
        steps,
        n,
        num_classes,
    )
    phase = Phase(f"training the classifier, {epochs} epochs", steps, progress=progress, logger=logger)
    phase.start()
    _fit(model, opt, train_set, epochs, batch_size, g, phase)
    accuracy = _test_accuracy(model, test_set)
    phase.result(test_accuracy=accuracy)
    phase.close()
    meta = _publish_classifier(model, out, data, train_set, test_set, num_classes, accuracy, {
        "width": width, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
    })  # fmt: skip
    if meta["weak"]:
        logger.warning(
            "the classifier is weak: test accuracy %.3f with %d classes (chance %.3f) is less than halfway "
            "from chance to perfect; an audit in its feature space will say so. Train longer (--epochs) or "
            "on more images",
            accuracy,
            num_classes,
            1.0 / num_classes,
        )
    return meta


def _fit(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    train_set: Any,
    epochs: int,
    batch_size: int,
    g: torch.Generator,
    phase: Phase,
) -> None:
    """Random crops and flips, cross-entropy, cosine decay of the learning rate over every step."""
    n = len(train_set)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * math.ceil(n / batch_size))
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            x = train_set.images[idx].float() / 255.0
            x = _augment(x, g)
            loss = F.cross_entropy(model(x), train_set.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            phase.update()
            total += loss.item() * len(idx)
        if (epoch + 1) % max(1, epochs // 20) == 0 or epoch + 1 == epochs:  # at most ~20 lines
            logger.info("classifier epoch %d/%d: loss %.4f", epoch + 1, epochs, total / n)
    model.eval()


@torch.no_grad()
def _test_accuracy(model: nn.Module, test_set: Any) -> float:
    batches = (test_set.images[i : i + 1024].float() / 255.0 for i in range(0, len(test_set), 1024))
    pred = torch.cat([model(x).argmax(1) for x in batches])
    return (pred == test_set.labels).double().mean().item()


def _publish_classifier(
    model: nn.Module,
    out: Path,
    data: DataConfig,
    train_set: Any,
    test_set: Any,
    num_classes: int,
    accuracy: float,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The weights and ``extractor.json``, written to a temp directory and renamed into ``out``."""
    channels = train_set.images.shape[1]
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / CLASSIFIER_WEIGHTS))
    meta = {
        "format": CLASSIFIER_FORMAT,
        "version": 1,
        "sha256": state_dict_hash(state),
        "file_sha256": sha256_file(tmp / CLASSIFIER_WEIGHTS),
        "data": {"name": data.name, "root": data.root, "subset": data.subset},
        "size": data.size,
        "channels": channels,
        "num_classes": num_classes,
        "classes": list(train_set.classes) if train_set.classes else None,
        **settings,
        "train_images": len(train_set),
        "test_images": len(test_set),
        "test_accuracy": accuracy,
        "chance_corrected_accuracy": chance_corrected(accuracy, num_classes),
        "weak": chance_corrected(accuracy, num_classes) < EXTRACTOR_PASS,
        "created_by": created_by(),
    }
    (tmp / CLASSIFIER_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    os.replace(tmp, out)
    return meta


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels (zero pad + crop) and horizontal flips, drawn per image."""
    n, c, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (n,), generator=g)
    dx = torch.randint(0, 5, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)).view(n, 1, h, 1).expand(n, c, h, w + 4)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)).view(n, 1, 1, w).expand(n, c, h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out
