"""Typed pipeline configuration.

One frozen dataclass per stage; a pipeline YAML file maps onto :class:`PipelineConfig` one to one.
Unknown keys and values of the wrong type are errors that name the offending key, raised before any
work starts. Overrides use the CLI form ``--section.key=value`` (the value is parsed as YAML).

The ``generator`` section has one subclass of :class:`GeneratorConfig` per producer kind, each in its own
module (``synthkit/producer_configs/``, found through the registry ``PRODUCERS``), which imports this one.
Two commands build their config from flags rather than a pipeline: :class:`GenerateConfig` (``synthkit
generate``, over the run's ``export`` section) and :class:`AuditConfig` (``synthkit audit``). Every
section checks itself in ``__post_init__`` with :func:`check`, :func:`choice` and :func:`check_minima`.
Nothing here imports torch, diffusers or the shard reader: loading a config is the command line's fast path.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import yaml

from synthkit.errors import ConfigError
from synthkit.registry import BACKBONES, EXTRACTORS, OBJECTIVES, PRODUCERS, SOURCES
from synthkit.trackers import AUTO, TRACKERS


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; pipelines write learning rates that way, so accept it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    """A YAML mapping whose keys are unique: PyYAML would silently keep the last of two equal keys."""
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise ConfigError(f"key {key!r} appears twice (line {line}); a later value would silently win")
        seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


__all__ = ["ConfigError", "PipelineConfig", "load_pipeline", "from_dict", "to_dict", "dump_yaml"]

# Small closed choices of one key each; the open ones (sources, backbones, objectives, producers) are
# registries (synthkit.registry), which third-party packages can extend.
HPG_SCHEDULES = ("linear", "cosine", "adaptive")
CONDITION_MODES = ("kmeans", "none", "labels")
MIXED_PRECISION = ("no", "bf16", "fp16")


# The checks every section's ``__post_init__`` is written with; an error names its key first
# (``train.lr: must be > 0``).


def check(cond: bool, key: str, msg: str) -> None:
    """Raise ``ConfigError("KEY: MSG")`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def choice(value: str, key: str, choices: tuple[str, ...]) -> None:
    """``value`` is one of ``choices``."""
    check(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")


def is_integer(value: Any) -> bool:
    """An ``int`` that is not a ``bool`` (Python's and YAML's ``true`` is an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    return (isinstance(value, float) or is_integer(value)) and math.isfinite(value)


def is_positive_integer(value: Any) -> bool:
    return is_integer(value) and value >= 1


def is_seed(value: Any) -> bool:
    """A seed torch's generators take: a non-negative signed 64-bit integer, 0 <= seed < 2**63."""
    return is_integer(value) and 0 <= value < 2**63


def check_minima(section: Any, prefix: str, minima: dict[str, int], *, or_null: bool = False) -> None:
    """Each key of ``minima`` is at least its minimum in ``section`` (``train.log_every: must be >= 1``);
    ``or_null``: the keys may also be None."""
    for name, least in minima.items():
        value = getattr(section, name)
        ok = (or_null and value is None) or value >= least
        check(ok, f"{prefix}.{name}", f"must be >= {least}{' or null' if or_null else ''}")


@dataclass(frozen=True)
class DataConfig:
    """The real, unlabeled training data.

    ``size`` is the side length every image is resized to; ``channels`` forces 1 (grayscale) or 3 (RGB),
    ``None`` keeps the source's own (an image folder: each split's mode, which must agree between train/
    and test/; a split mixing grayscale and colour files is read as RGB). ``subset`` takes a fixed random
    subset of the training split (seeded by ``subset_seed``), for data-efficiency runs and quick experiments.
    """

    name: str = "digits"
    root: str | None = None
    size: int = 16
    channels: int | None = None
    subset: int | None = None
    subset_seed: int = 0

    def __post_init__(self) -> None:
        SOURCES.check(self.name, "data.name")
        check(self.size >= 8, "data.size", f"must be >= 8, got {self.size}")
        check(self.channels in (None, 1, 3), "data.channels", f"must be 1, 3 or null, got {self.channels}")
        check(self.subset is None or self.subset > 0, "data.subset", "must be positive or null")
        check(self.name != "folder" or self.root is not None, "data.root", "is required for data.name=folder")


@dataclass(frozen=True)
class ViewsConfig:
    """SimCLR-style augmentations (Chen et al., 2020), adapted to small images and grayscale."""

    crop_scale: tuple[float, float] = (0.3, 1.0)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        check(0 < lo <= hi <= 1, "views.crop_scale", f"needs 0 < min <= max <= 1, got {self.crop_scale}")
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            v = getattr(self, name)
            check(0 <= v <= 1, f"views.{name}", f"must be a probability, got {v}")
        for name in ("brightness", "contrast", "saturation"):
            check(getattr(self, name) >= 0, f"views.{name}", "must be >= 0")
        check(0 <= self.hue <= 0.5, "views.hue", "must be in [0, 0.5]")


@dataclass(frozen=True)
class EncoderConfig:
    """Backbone h and projection head g; f = g(h(x)).

    ``backbone``: a registered name (``convnet``, ``resnet18``, ``resnet50``), or ``timm/NAME`` for a timm
    architecture (the optional extra ``synthkit[timm]``; built without weights).
    ``stem``: a ResNet's first layers. ``small``: a 3x3 stride-1 convolution, no max-pool (SimCLR's CIFAR
    stem); ``standard``: the ImageNet stem (7x7 stride 2 and a max-pool); ``auto`` (default): ``small`` for
    images up to 64 px (``data.size``), ``standard`` above (``encoders/backbones.py`` says why), and a timm
    architecture's own stem. The stem a run used is recorded in ``run.json`` and ``final/final.json``.
    ``small_stem``: the older spelling of ``stem: small`` for a timm ResNet-family backbone; at 32 px the
    stock stem leaves a 1x1 map before the last stage. ``weights``: a local safetensors file to start from:
    a whole encoder's state (``backbone.*`` and ``head.*``, e.g. another run's ``final/encoder.safetensors``)
    or a backbone's alone; shapes are checked, and nothing is ever downloaded.
    """

    backbone: str = "convnet"
    width: int = 32
    proj_hidden: int = 256
    proj_dim: int = 128
    small_stem: bool = False
    weights: str | None = None
    stem: str = "auto"

    def __post_init__(self) -> None:
        choice(self.stem, "encoder.stem", ("auto", "small", "standard"))
        if self.backbone.startswith("timm/"):
            check(len(self.backbone) > 5, "encoder.backbone", "timm/NAME needs a model name")
            check(
                not (self.small_stem and self.stem == "standard"),
                "encoder.small_stem",
                "contradicts encoder.stem=standard (small_stem is the older spelling of stem=small)",
            )
        else:
            BACKBONES.check(self.backbone, "encoder.backbone")
            check(
                not self.small_stem,
                "encoder.small_stem",
                "applies to timm/NAME backbones only (encoder.stem chooses a ResNet's stem)",
            )
            check(
                self.stem == "auto" or self.backbone in ("resnet18", "resnet50"),
                "encoder.stem",
                f"chooses a ResNet's stem; {self.backbone} has no choice (leave it auto)",
            )
        for name in ("width", "proj_hidden", "proj_dim"):
            check(getattr(self, name) > 0, f"encoder.{name}", "must be positive")


@dataclass(frozen=True)
class ObjectiveConfig:
    """The contrastive objective; ``name`` picks it (registry ``OBJECTIVES``) and which keys exist.

    ``temperature``: tau of the InfoNCE-type loss every objective here uses.
    """

    TAG: ClassVar[str] = "name"
    name: str = "simclr"
    temperature: float = 0.5

    def __post_init__(self) -> None:
        OBJECTIVES.check(self.name, "objective.name")
        check(self.temperature > 0, "objective.temperature", "must be > 0")


@dataclass(frozen=True)
class SimCLRConfig(ObjectiveConfig):
    """SimCLR (Chen et al., ICML 2020): NT-Xent over the batch's views; a positive group may hold more than
    two views (a generated pair's four), in the supervised-contrastive form (``losses/multi_positive.py``)."""

    name: str = "simclr"


@dataclass(frozen=True)
class MoCoConfig(ObjectiveConfig):
    """MoCo v2 (Chen et al., 2020): a momentum encoder (``moco_momentum``) and a queue of ``queue_size`` keys
    as negatives.

    ``queue_synthetic``: whether the keys of synthetic images (hard samples, pair members) are enqueued too.
    On by default: MoCo has no in-batch negatives, so without it synthetic images would act only as anchors,
    never as negatives, which docs/method.md ("Encoder objectives") asks of them.
    """

    name: str = "moco"
    moco_momentum: float = 0.99
    queue_size: int = 4096
    queue_synthetic: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.moco_momentum < 1, "objective.moco_momentum", "must be in [0, 1)")
        check(self.queue_size >= 1, "objective.queue_size", "must be >= 1")


@dataclass(frozen=True)
class GeneratorConfig:
    """The producer of synthetic data; ``kind`` picks it (registry ``PRODUCERS``) and which keys exist.

    Each kind is a subclass with its own keys, in ``synthkit/producer_configs/`` for the built-in kinds (a
    plugin's beside its producer); a key of another kind is an unknown key. ``READS`` names
    the keys of the ``hsg`` and ``hpg`` sections the kind uses (None: all of them); setting another of them
    away from its default is an error, since the producer would silently ignore it.
    """

    TAG: ClassVar[str] = "kind"
    READS: ClassVar[dict[str, tuple[str, ...] | None]] = {"hsg": None, "hpg": None}
    #: runs whatever ``hsg.enabled``/``hpg.enabled`` say (the naive baseline); others run when one is on
    STANDALONE: ClassVar[bool] = False
    kind: str = "cgan"

    def __post_init__(self) -> None:
        PRODUCERS.check(self.kind, "generator.kind")

    def check_pipeline(self, cfg: PipelineConfig) -> None:
        """What this producer needs of the other sections (raise ConfigError); ``PipelineConfig`` calls it."""

    @property
    def steps_before_epochs(self) -> int:
        """Generator steps a run takes before the encoder's first epoch (the cGAN's pre-training)."""
        return 0


def streamed_method_data(cfg: PipelineConfig) -> None:
    """HSG and HPG on real data streamed from shard sets (``mix.sources``): conditions are fitted on a
    bounded sample and assigned per batch, which k-means and unconditional modes support; labels do not."""
    check(
        not cfg.mix.sources or cfg.conditions.mode != "labels",
        "conditions.mode",
        "labels conditions need the in-memory real data (data.*); with shard sets (mix.sources) use "
        "kmeans or none",
    )


@dataclass(frozen=True)
class ConditionsConfig:
    """What the generators are conditioned on.

    ``kmeans``: pseudo-classes from k-means (``k`` clusters) over backbone features of the real data,
    refreshed every ``refresh_every`` epochs. ``none``: unconditional. ``labels``: the true labels; this
    uses label information the method otherwise never sees, so it must be switched on explicitly with
    ``allow_labels: true`` and is recorded in every output.

    Real data streamed from shard sets (``mix.sources``): k-means is fitted on a bounded sample of
    ``fit_samples`` images of the stream, and every batch is assigned to the nearest centroid of its features,
    so memory does not grow with the data set.
    """

    mode: str = "kmeans"
    k: int = 10
    refresh_every: int = 5
    allow_labels: bool = False
    fit_samples: int = 10_000

    def __post_init__(self) -> None:
        choice(self.mode, "conditions.mode", CONDITION_MODES)
        check(self.k >= 1, "conditions.k", "must be >= 1")
        check(self.refresh_every >= 1, "conditions.refresh_every", "must be >= 1")
        check(self.fit_samples >= self.k, "conditions.fit_samples", f"must be >= conditions.k ({self.k})")
        check(
            self.mode != "labels" or self.allow_labels,
            "conditions.mode",
            "'labels' conditions the generator on true labels; set conditions.allow_labels=true to opt in",
        )


@dataclass(frozen=True)
class HSGConfig:
    """Hard sample generation (Wu et al., AAAI 2023): the generator maximises the encoder's CL loss.

    ``synthetic_ratio`` is B_hard / B_real in every encoder step. For ``warmup_epochs`` the GAN trains on
    realism alone and the encoder on real data alone; then ``lambda_hard`` ramps linearly from 0 over
    ``ramp_epochs``.
    """

    enabled: bool = True
    lambda_hard: float = 1.0
    warmup_epochs: int = 2
    ramp_epochs: int = 3
    synthetic_ratio: float = 0.25

    def __post_init__(self) -> None:
        check(self.lambda_hard >= 0, "hsg.lambda_hard", "must be >= 0")
        check(self.warmup_epochs >= 0, "hsg.warmup_epochs", "must be >= 0")
        check(self.ramp_epochs >= 0, "hsg.ramp_epochs", "must be >= 0")
        check(0 < self.synthetic_ratio <= 4, "hsg.synthetic_ratio", "must be in (0, 4]")


@dataclass(frozen=True)
class HPGConfig:
    """Hard positive pair generation (Wu et al., AAAI 2023) with a pair of generators G_a, G_b
    (docs/method.md, "HPG with a pair of generators").

    G_a and G_b take the same (z, c); G_b starts as a copy of G_a. Their similarity s = cos(h(x_a), h(x_b))
    in the encoder's backbone space is held near a target s*(t) by ``lambda_pair * (relu(s - s*) +
    mu * relu(s* - s))``. s*(t) falls from ``s_start`` to ``s_end`` after ``warmup_epochs`` (``linear`` or
    ``cosine`` in training progress), or, with ``adaptive``, follows the encoder's mean similarity of two
    augmented views of a real image (an EMA with ``adaptive_momentum``) minus ``adaptive_margin``, clipped
    to [s_end, s_start]. ``pair_ratio`` is the number of pairs per real image in a step; each pair's two
    images with two views each form one positive group of four views in the encoder's loss. The default
    range sits around the similarity the encoder gives two augmented views of a real image (about 0.93 for the
    conv net on Fashion-MNIST training images, measured in training): pairs start a little easier than
    augmented positives and end harder, without reaching the similarity of unrelated images.
    ``lambda_pair`` is 10 because at 1 the pair term loses to the realism term: on Fashion-MNIST (6 epochs,
    5,000 training images) s stalled near 0.97 while s* fell to 0.76; at 10 it follows s* with a lag of a
    few steps (eval/method_table.py's similarity plot).

    ``init_noise``: G_b starts as G_a plus Gaussian noise of this size relative to each weight tensor's
    standard deviation. An exact copy would never drift apart: the gradient of a cosine similarity
    vanishes where it equals 1, so the pair term cannot push identical outputs apart on its own.
    """

    enabled: bool = False
    pair_ratio: float = 0.125
    lambda_pair: float = 10.0
    mu: float = 1.0
    schedule: str = "linear"
    s_start: float = 0.95
    s_end: float = 0.75
    warmup_epochs: int = 2
    adaptive_momentum: float = 0.9
    adaptive_margin: float = 0.1
    init_noise: float = 0.1

    def __post_init__(self) -> None:
        check(self.init_noise >= 0, "hpg.init_noise", "must be >= 0")
        check(0 < self.pair_ratio <= 2, "hpg.pair_ratio", "must be in (0, 2]")
        check(self.lambda_pair >= 0, "hpg.lambda_pair", "must be >= 0")
        check(self.mu >= 0, "hpg.mu", "must be >= 0")
        choice(self.schedule, "hpg.schedule", HPG_SCHEDULES)
        check(-1 <= self.s_end <= self.s_start <= 1, "hpg.s_start/s_end", "need -1 <= s_end <= s_start <= 1")
        check(self.warmup_epochs >= 0, "hpg.warmup_epochs", "must be >= 0")
        check(0 <= self.adaptive_momentum < 1, "hpg.adaptive_momentum", "must be in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    """The encoder's optimisation and the loop's bookkeeping.

    ``channels_last`` keeps the activations of the encoder, G and D in NHWC layout. Measured on this
    project's 2-core CPU: a SimCLR step of the 4-block conv net on 512 views of 28 px takes ~27% less
    time, its cost grows linearly with the batch instead of super-linearly, and G's forward/backward
    drops by a third (NHWC is also the faster layout for mixed-precision convolutions on recent GPUs).

    ``sync_batchnorm`` makes the encoder's batch norm (and MoCo's key encoder's) normalise over the global
    batch of every process (torch's SyncBatchNorm; SimCLR's "global BN"), so that a step at W processes is a
    step on one process with the whole batch. GPUs only: torch's SyncBatchNorm refuses CPU tensors on more
    than one process, so there it is an error; without it each process normalises with its own share.

    ``trackers``: where metrics and sample grids go besides ``metrics.jsonl``: any of ``tensorboard``,
    ``mlflow``, ``wandb`` (each an optional extra, ``pip install 'synthkit[mlflow]'``), ``[]`` for none, or
    ``[auto]`` (the default): TensorBoard when it is installed, else none (``synthkit/trackers.py``).

    ``deterministic``: for bit-stable GPU runs, at some cost in speed: deterministic algorithms only
    (``torch.use_deterministic_algorithms``; strict, except that on CUDA a run with a producer only warns
    on the views' crop and resize backward, which have no deterministic CUDA kernel), cuDNN deterministic
    and not autotuned, TF32 off, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (``synthkit/determinism.py``;
    README.md, "Determinism", says what is then bit-identical). The settings are restored when the run ends.
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-6
    seed: int = 0
    mixed_precision: str = "no"
    channels_last: bool = True
    checkpoint_every: int = 5
    keep_checkpoints: int = 2
    log_every: int = 10
    knn_every: int = 5
    knn_k: int = 200
    knn_temperature: float = 0.1
    record_indices: bool = False
    sync_batchnorm: bool = False
    trackers: tuple[str, ...] = (AUTO,)
    deterministic: bool = False

    def __post_init__(self) -> None:
        for name in self.trackers:
            choice(name, "train.trackers", (AUTO, *TRACKERS))
        check(AUTO not in self.trackers or len(self.trackers) == 1, "train.trackers", "auto stands alone")
        check(len(set(self.trackers)) == len(self.trackers), "train.trackers", "lists a tracker twice")
        check(self.epochs >= 0, "train.epochs", "must be >= 0 (0 only for a GAN pre-training run)")
        check(self.batch_size >= 2, "train.batch_size", "must be >= 2")
        check(self.lr > 0, "train.lr", "must be > 0")
        check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        choice(self.mixed_precision, "train.mixed_precision", MIXED_PRECISION)
        for name in ("checkpoint_every", "keep_checkpoints", "log_every", "knn_k"):
            check(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        check(self.knn_every >= 0, "train.knn_every", "must be >= 0 (0 disables the monitor)")
        check(self.knn_temperature > 0, "train.knn_temperature", "must be > 0")


#: The export settings' checks, shared by the ``export`` section (``export.n: must be ...``) and the flags
#: of ``synthkit generate`` over it (``--n must be ...``): key -> (the test, what the value must be).
EXPORT_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (is_positive_integer, "must be a positive integer"),
    "seed": (is_seed, "must be an integer in [0, 2**63)"),
    "maxcount": (is_positive_integer, "must be a positive integer"),
    "batch_size": (is_positive_integer, "must be a positive integer"),
}


@dataclass(frozen=True)
class ExportConfig:
    """Defaults for ``synthkit generate``.

    ``name``: the set's name, the prefix of its shard files and sample keys. By default (null) each export
    gets its own, ``STAGE-PRODUCER-DIGEST-train`` (e.g. ``hsg-cgan-1f3a9c2e-train``; the digest is of the
    request: run weights, n, seed, kind, sizes), so two sets never share file names or keys, and the same
    request gives the same name. The ``-train`` suffix is the split Hugging Face's
    ``load_dataset("webdataset", data_dir=SET)`` reads the shards as (``shards/README.md``).
    """

    n: int = 1000
    seed: int = 0
    maxcount: int = 1000
    batch_size: int = 256
    name: str | None = None

    def __post_init__(self) -> None:
        for key, (ok, must) in EXPORT_CHECKS.items():
            value = getattr(self, key)
            check(ok(value), f"export.{key}", f"{must}, got {value!r}")
        check(
            self.name is None or self.name.isidentifier() or self.name.replace("-", "_").isidentifier(),
            "export.name",
            f"{self.name!r} must be letters, digits, '_' or '-'",
        )


#: what ``synthkit generate --kind`` writes: hard samples, positive pairs, or both
GENERATE_KINDS = ("hard", "pair", "all")


def _check_flag(cond: bool, flag: str, msg: str) -> None:
    """A command-line flag's value is named as the flag: ``--maxcount must be a positive integer, got 0``."""
    if not cond:
        raise ConfigError(f"--{flag.replace('_', '-')} {msg}")


@dataclass(frozen=True)
class GenerateConfig:
    """What ``synthkit generate`` (:func:`synthkit.export.generate`) is asked for, each value as given.

    None leaves a value to the run: ``n``, ``seed``, ``maxcount``, ``batch_size`` and ``name`` to its
    ``export`` section (:meth:`over`), ``kind`` to what its sampler makes, ``part`` to the launch (the
    whole set, or this process's part under ``accelerate launch``). ``part``: (I, N), part I of N. Every
    value is checked as its flag names it (``--maxcount must be a positive integer, got 0``), by the same
    checks as the ``export`` section, before the run is read.
    """

    n: int | None = None
    seed: int | None = None
    maxcount: int | None = None
    batch_size: int | None = None
    name: str | None = None
    kind: str | None = None
    part: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for key, (ok, must) in EXPORT_CHECKS.items():
            value = getattr(self, key)
            _check_flag(value is None or ok(value), key, f"{must}, got {value!r}")
        kinds = ", ".join(GENERATE_KINDS)
        _check_flag(
            self.kind in (None, *GENERATE_KINDS), "kind", f"must be one of {kinds}, got {self.kind!r}"
        )
        self._check_part()

    def _check_part(self) -> None:
        """(I, N): part I of N, 0 <= I < N."""
        part = self.part
        if part is None:
            return
        pair = isinstance(part, tuple) and len(part) == 2 and all(map(is_integer, part))
        text = "/".join(map(str, part)) if isinstance(part, tuple) else repr(part)
        _check_flag(pair and 0 <= part[0] < part[1], "part", f"must be I/N with 0 <= I < N, got {text}")

    def over(self, section: ExportConfig) -> GenerateConfig:
        """These values over the run's ``export`` section: every value of it that was not given here."""
        unset = {
            f.name: getattr(section, f.name)
            for f in dataclasses.fields(section)
            if getattr(self, f.name) is None
        }
        return dataclasses.replace(self, **unset)


#: ``audit.reference``, the real-vs-real reference: ``auto`` (a named source's other split, else a disjoint
#: split of the real set), ``split`` (always a disjoint split of the real set), ``none`` (no reference; the
#: gates that need one are skipped)
AUDIT_REFERENCES = (AUTO, "split", "none")
#: the least value of each of the audit's sizes and counts
_AUDIT_MINIMA = {
    "k": 1,
    "chunk_size": 1,
    "batch_size": 1,
    "kid_subsets": 1,
    "kid_subset_size": 2,
    "uniformity_max": 2,
    "top": 1,
    "grid_per_row": 1,
    "exact_max": 2,
    "prdc_repeats": 1,
    "ann_nprobe": 1,
    "ann_iters": 0,
    "ann_probe": 1,
}


@dataclass(frozen=True)
class AuditConfig:
    """``synthkit audit``: the hyperparameters of one audit (:func:`synthkit.audit.audit`); recorded in the
    report. Not a pipeline section: the command's flags build it.

    ``k``: neighbourhood of the PRDC manifolds (Naeem et al. use 5). ``chunk_size``: rows and columns per
    distance block (memory, not results). ``kid_subsets`` x ``kid_subset_size``: KID's random subsets.
    ``memorisation_threshold``: suspect when nearest-real distance / that real image's own nearest-real
    distance is below it. ``uniformity_max``: uniformity uses a seeded subsample of at most this many
    points per set (all pairs of 50,000 points would cost more than everything else together).
    ``device``: where features and distances are computed (None: CUDA when available, else the CPU).
    ``reference``: the real-vs-real reference the gates read every figure against (:data:`AUDIT_REFERENCES`):
    ``auto`` holds out the other split of a named source (the test split when the real data is the train
    split), or a disjoint part of a real shard set; ``split`` always the latter; ``none`` skips it.

    Scale: with both sets at most ``exact_max`` points PRDC and memorisation are exact. Above it PRDC is
    the mean over ``prdc_repeats`` seeded samples of ``prdc_sample`` points per set (Naeem et al. use
    10,000), and memorisation's nearest neighbours come from an IVF index of the real features with
    ``ann_nlist`` lists (None: 4 sqrt(N)), ``ann_nprobe`` probed per query and ``ann_iters`` k-means
    rounds, its recall measured on ``ann_probe`` seeded samples against the exact search.
    """

    extractor: str = "auto"
    real_split: str = "train"
    reference: str = "auto"
    k: int = 5
    chunk_size: int = 4096
    batch_size: int = 512
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    memorisation_threshold: float = 0.25
    saturated_fraction: float = 0.99
    uniformity_max: int = 5000
    max_samples: int | None = None
    max_real: int | None = None
    top: int = 16
    grid_per_row: int = 10
    seed: int = 0
    device: str | None = None
    exact_max: int = 50_000
    prdc_sample: int = 10_000
    prdc_repeats: int = 3
    ann_nlist: int | None = None
    ann_nprobe: int = 32
    ann_iters: int = 10
    ann_probe: int = 1000

    def __post_init__(self) -> None:
        choice(self.extractor, "audit.extractor", (AUTO, *EXTRACTORS))
        choice(self.real_split, "audit.real_split", ("train", "test"))
        choice(self.reference, "audit.reference", AUDIT_REFERENCES)
        check_minima(self, "audit", _AUDIT_MINIMA)
        check_minima(self, "audit", {"max_samples": 2, "max_real": 2, "ann_nlist": 1}, or_null=True)
        check(self.prdc_sample > self.k, "audit.prdc_sample", f"must be > audit.k ({self.k})")
        check(self.memorisation_threshold > 0, "audit.memorisation_threshold", "must be > 0")
        check(0 < self.saturated_fraction <= 1, "audit.saturated_fraction", "must be in (0, 1]")
        check(
            self.device is None or isinstance(self.device, str),
            "audit.device",
            "must be a device name or null",
        )


@dataclass(frozen=True)
class MixConfig:
    """Train from shard sets instead of in-memory real data and live generators: plain CL on a mix.

    ``sources`` are ``NAME=DIR:WEIGHT`` specs (e.g. ``real=shards/fmnist-real:0.7``, or ``--data`` on the
    command line); each set is streamed through synthkit's safe reader, resampled, split by process and
    DataLoader worker, and mixed in the given proportions. Names must be unique; the weights are the
    proportions drawn and must add up to 1 (within 0.001). Every set must have the same image size and
    channels. With a producer on (HSG, HPG), every set must be real (``synthkit shards convert``): the
    producer then trains on the streamed real data; synthetic sets need the producer off.
    ``epoch_samples``: samples per epoch, over all processes; default: the mix's real samples (the sets of
    kind real), so an epoch takes as many steps as a real-only run over them and never draws a real sample
    twice; with no real set, the largest set's size. Each epoch records the samples it drew per set
    (``mix_drawn_NAME``). ``num_workers``: DataLoader workers per process that decode shards ahead of the
    step (persistent); a fixed number, not one per CPU core, because the batch order (and so a run's exact
    numbers) depends on it; 0 decodes in the training process.
    ``on_error``: ``raise`` on a corrupt shard or image, or ``skip`` it and report the count.
    """

    sources: tuple[str, ...] = ()
    epoch_samples: int | None = None
    num_workers: int = 2
    on_error: str = "raise"

    def __post_init__(self) -> None:
        for spec in self.sources:
            check("=" in spec and ":" in spec, "mix.sources", f"{spec!r} is not NAME=DIR:WEIGHT")
        names = [spec.partition("=")[0] for spec in self.sources]
        twice = sorted({n for n in names if names.count(n) > 1})
        check(not twice, "mix.sources", f"source names must be unique; {', '.join(twice)} given twice")
        weights = []
        for spec in self.sources:
            try:
                weights.append(float(spec.rpartition(":")[2]))
            except ValueError:  # parse_mix_spec names the bad weight when the mix is built
                weights = []
                break
        if weights and all(math.isfinite(w) for w in weights):
            total = sum(weights)
            check(
                abs(total - 1.0) <= 1e-3,
                "mix.sources",
                f"the weights add up to {total:g}, not 1 ("
                + ", ".join(f"{n} {w:g}" for n, w in zip(names, weights, strict=True))
                + "); they are the proportions each set is drawn with",
            )
        check(self.epoch_samples is None or self.epoch_samples > 0, "mix.epoch_samples", "must be positive")
        check(self.num_workers >= 0, "mix.num_workers", "must be >= 0")
        choice(self.on_error, "mix.on_error", ("raise", "skip"))


@dataclass(frozen=True)
class RemoteConfig:
    """Retries and timeouts of remote shard reads and uploads (``s3://``, ``http(s)://``, ``pipe:``; see
    ``synthkit/shards/location.py``). A transient fault (a dropped connection, an incomplete body, HTTP 5xx,
    a timeout, a stall or trickle) is retried up to ``attempts`` tries in all, waiting ``backoff_s`` doubled
    per try (at most ``backoff_max_s``), and resumed where it stopped; a permanent one (404, 403, a hash
    mismatch) is not. ``read_timeout_s``: no byte for this long is a stall, and so is fewer than
    ``min_bytes_per_s`` (0: off) on average over that long. Commands without a pipeline config read the
    ``SYNTHKIT_REMOTE_ATTEMPTS``, ``SYNTHKIT_REMOTE_READ_TIMEOUT_S``, ... environment variables. These keys
    do not change what a run computes: ``--resume`` may change them.

    The one place of these keys, their defaults and their checks: the policy the shard reader follows
    (``synthkit.shards.location.RemotePolicy``) is this section with its backoff added.
    """

    attempts: int = 6
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    min_bytes_per_s: int = 1024
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        # the policy is also built from the SYNTHKIT_REMOTE_* environment, whose errors quote these messages
        if not (is_integer(self.attempts) and self.attempts >= 1):
            raise ConfigError(f"remote.attempts must be an integer >= 1, got {self.attempts!r}")
        for name in ("connect_timeout_s", "read_timeout_s", "min_bytes_per_s", "backoff_s", "backoff_max_s"):
            value, positive = getattr(self, name), name.endswith("timeout_s")
            if not (is_number(value) and (value > 0 if positive else value >= 0)):
                raise ConfigError(
                    f"remote.{name} must be a number {'> 0' if positive else '>= 0'}, got {value!r}"
                )


@dataclass(frozen=True)
class EvalConfig:
    """Frozen-encoder evaluation: weighted kNN (Wu et al., 2018 protocol) and a linear probe."""

    knn_k: int = 200
    knn_temperature: float = 0.1
    probe_epochs: int = 100
    probe_lr: float = 1e-2
    probe_weight_decay: float = 1e-5

    def __post_init__(self) -> None:
        check(self.knn_k >= 1, "eval.knn_k", "must be >= 1")
        check(self.knn_temperature > 0, "eval.knn_temperature", "must be > 0")
        check(self.probe_epochs >= 1, "eval.probe_epochs", "must be >= 1")


def _default_generator() -> GeneratorConfig:
    """The ``generator`` section left out: the default kind's (``cgan``), found in the registry like any other
    kind's, so that this module imports no kind's module (they import this one)."""
    kind, _ = _tagged(GeneratorConfig, {}, "generator")
    return kind()


@dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline; the defaults are the quickstart (HSG on the embedded digits)."""

    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    objective: ObjectiveConfig = field(default_factory=SimCLRConfig)
    generator: GeneratorConfig = field(default_factory=_default_generator)
    conditions: ConditionsConfig = field(default_factory=ConditionsConfig)
    hsg: HSGConfig = field(default_factory=HSGConfig)
    hpg: HPGConfig = field(default_factory=HPGConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)

    @property
    def producer_active(self) -> bool:
        """Whether a producer makes synthetic data for the encoder (else: plain CL on the real data)."""
        return self.generator.STANDALONE or self.hsg.enabled or self.hpg.enabled

    def __post_init__(self) -> None:
        gen = self.generator
        gen.check_pipeline(self)
        if self.producer_active:
            for section, reads in gen.READS.items():
                if reads is None or not getattr(self, section).enabled:  # a section that is off reads nothing
                    continue
                ours, default = getattr(self, section), type(getattr(self, section))()
                for f in dataclasses.fields(ours):
                    if f.name not in reads and getattr(ours, f.name) != getattr(default, f.name):
                        raise ConfigError(
                            f"{section}.{f.name} is set to {getattr(ours, f.name)!r}, but generator.kind="
                            f"{gen.kind} does not use it (it reads {section}.{', '.join(reads)}); remove it"
                        )
        check(
            self.train.epochs >= 1 or gen.steps_before_epochs > 0,
            "train.epochs",
            "must be >= 1 (0 trains the GAN alone, and needs generator.pretrain_steps > 0)",
        )


# --------------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """``X | None`` (and ``X | Y``): None where allowed, else the first alternative that takes the value."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key)
        except ConfigError:
            pass
    raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")


def _coerce_literal(value: Any, tp: Any, key: str) -> Any:
    if value not in typing.get_args(tp):
        raise ConfigError(f"{key}: {value!r} is not one of {typing.get_args(tp)}")
    return value


def _coerce_tuple(value: Any, tp: Any, key: str) -> tuple[Any, ...]:
    """A YAML list: ``tuple[X, ...]`` of any length, or ``tuple[X, Y]`` of exactly that many values."""
    args = typing.get_args(tp)
    if args[-1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if not isinstance(value, (list, tuple)) or len(value) != len(args):
        raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
    return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))


def _coerce_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _coerce_int(value: Any, key: str) -> int:
    if not is_integer(value):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    return value


def _coerce_float(value: Any, key: str) -> float:
    """A number (an integer is taken as a float), finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def _coerce_str(value: Any, key: str) -> str:
    if isinstance(value, bool):
        raise ConfigError(
            f"{key}: expected a string, got {value!r} (YAML reads yes/no/on/off as booleans: quote it, "
            f"e.g. {key}='{'yes' if value else 'no'}')"
        )
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


# How a value is checked and converted against its field's annotation: generic forms by their origin
# (``typing.get_origin``), plain types by the type itself.
_BY_ORIGIN = {
    Union: _coerce_union,
    types.UnionType: _coerce_union,
    Literal: _coerce_literal,
    tuple: _coerce_tuple,
}
_BY_TYPE = {bool: _coerce_bool, int: _coerce_int, float: _coerce_float, str: _coerce_str}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it converted (lists to tuples, ints to floats)."""
    origin = typing.get_origin(tp)
    if origin in _BY_ORIGIN:
        return _BY_ORIGIN[origin](value, tp, key)
    if tp in _BY_TYPE:
        return _BY_TYPE[tp](value, key)
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")


def _tagged(cls: type, raw: dict[str, Any], prefix: str) -> tuple[type, str]:
    """The class of a tagged section (``generator`` by ``kind``, ``objective`` by ``name``) and a note for
    error messages; ``cls`` itself for an untagged one."""
    tag = getattr(cls, "TAG", None)
    if tag is None:
        return cls, ""
    registry = PRODUCERS if issubclass(cls, GeneratorConfig) else OBJECTIVES
    name = raw.get(tag, cls.__dataclass_fields__[tag].default)
    if not isinstance(name, str):
        raise ConfigError(f"{prefix}.{tag}: expected a string, got {name!r}")
    registry.check(name, f"{prefix}.{tag}")
    sub = registry.get(name).config_class()
    if not (isinstance(sub, type) and issubclass(sub, cls)):
        raise ConfigError(f"{prefix}.{tag}={name}: its config class {sub!r} is not a {cls.__name__}")
    return sub, f"keys of {prefix}.{tag}={name}"


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raise ConfigError(
            f"{prefix or 'pipeline'}: is empty (null); give its keys, or leave the section out for defaults"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'pipeline'}: expected a mapping, got {type(raw).__name__}")
    cls, note = _tagged(cls, raw, prefix)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names, key=str)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(where + str(u) for u in unknown)}"
            f" ({note or 'known'}: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - defensive: dataclass signature mismatch
        raise ConfigError(f"{prefix}: {e}") from e


def from_dict(raw: dict[str, Any]) -> PipelineConfig:
    """Build and validate a :class:`PipelineConfig` from nested plain data."""
    return _build(PipelineConfig, raw, "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested data (tuples as lists) suitable for YAML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["--train.epochs=3", "data.name=digits"]`` into a nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in items:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r}: expected --section.key=value")
        dotted, value_text = text.split("=", 1)
        parts = dotted.split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {item!r}: expected --section.key=value")
        try:
            value = _yaml_load(value_text) if value_text != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {dotted}: cannot parse {value_text!r}: {e}") from e
        nested.setdefault(parts[0], {})[parts[1]] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_pipeline(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a pipeline YAML file (or the defaults when ``path`` is None) and apply overrides.

    An override that switches a tagged section to another kind (``--generator.kind=diffusion`` on a cGAN
    pipeline, ``--objective.name=moco`` on a SimCLR one) starts that section afresh: the file's keys of the
    section belong to its own kind, and the new kind's keys come from the other overrides.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"pipeline file {p} does not exist")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"pipeline file {p} is not UTF-8 text (byte {e.start}); save it as UTF-8"
            ) from e
        except OSError as e:
            raise ConfigError(f"pipeline file {p} cannot be read: {e.strerror or e}") from e
        try:
            loaded = _yaml_load(text)
        except ConfigError as e:
            raise ConfigError(f"pipeline file {p}: {e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"pipeline file {p} is not valid YAML: {' '.join(str(e).split())}") from e
        if loaded is None:
            raise ConfigError(f"pipeline file {p} is empty; give at least one section (e.g. train: {{}})")
        if not isinstance(loaded, dict):
            raise ConfigError(f"pipeline file {p}: expected a mapping of sections at the top level")
        raw = loaded
        from_dict(raw)  # the file must be valid on its own; an override must not hide a broken section
    if overrides:
        extra = parse_overrides(overrides)
        for section, cls in (("generator", GeneratorConfig), ("objective", ObjectiveConfig)):
            tag = cls.TAG
            old, new = raw.get(section), extra.get(section, {})
            default = cls.__dataclass_fields__[tag].default
            if isinstance(old, dict) and tag in new and old.get(tag, default) != new[tag]:
                # another kind: the file's keys belong to its own kind; the new kind's come from overrides
                raw = {**raw, section: {}}
        raw = _merge(raw, extra)
    return from_dict(raw)


def dump_yaml(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_pipeline(cfg: PipelineConfig, path: str | Path) -> None:
    Path(path).write_text(dump_yaml(cfg))
