"""Registries: the one list of what exists, per noun (producers, objectives, backbones, sources, extractors).

Config validation, the command line's choices and ``--help`` all read these, so a name is valid exactly when
something can be built from it. Entries are ``"module:attribute"`` strings resolved on first use, so reading
the names (``synthkit --help``, loading a config) imports no model code.

A third-party package adds an entry without editing synthkit, either in code::

    from synthkit.registry import PRODUCERS, ProducerEntry
    PRODUCERS.register("mygan", ProducerEntry(config="mypkg.gan:MyGanConfig", impl="mypkg.gan:MyGanProducer"))

or, with nothing to import first, through an entry point of its distribution (``pyproject.toml``)::

    [project.entry-points."synthkit.producers"]
    mygan = "mypkg.gan:MyGanProducer"   # a ProducerEntry, or a producer class with a Config attribute

or by naming the import path itself in the config: ``generator.kind: mypkg.gan:MyGanProducer``.

A producer is registered by its trainer class (``producers/base.py``), whose ``Sampler`` attribute names the
frozen sampler ``load_final`` reads back; a producer that only samples (a frozen generator of your own,
``samplers/frozen.py``) is registered by its sampler class alone, and trains with ``FROZEN_TRAINER``
(docs/producers.md).

Entry-point groups: ``synthkit.producers``, ``synthkit.objectives``, ``synthkit.backbones``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from synthkit.errors import ConfigError


def resolve(target: str) -> Any:
    """Import ``"package.module:attribute"`` (dots after the colon walk attributes)."""
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise ConfigError(f"{target!r} is not an import path of the form package.module:attribute")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import {module_name!r} (from {target!r}): {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{module_name!r} has no attribute {attr!r} (from {target!r})") from None
    return obj


class Registry:
    """Names -> things, with built-ins given as import paths and more added by ``register`` or entry points.

    Args:
        key: the config key the name is given under (``generator.kind``), for error messages.
        builtins: name -> ``"module:attribute"`` (or the object itself).
        group: the entry-point group third-party packages register under.
    """

    def __init__(
        self, key: str, builtins: dict[str, Any], group: str | None = None, *, allow_paths: bool = False
    ) -> None:
        self.key, self.group, self.allow_paths = key, group, allow_paths
        self._entries: dict[str, Any] = dict(builtins)
        self._resolved: dict[str, Any] = {}
        self._plugins_loaded = group is None

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=self.group):
            self._entries.setdefault(ep.name, ep.value)

    def refresh(self) -> None:
        """Read the entry points again (after installing a plugin into a running interpreter)."""
        self._plugins_loaded = self.group is None

    def register(self, name: str, target: Any, *, replace: bool = False) -> None:
        """Add ``name``; ``target`` is the object or its ``"module:attribute"`` path."""
        self._load_plugins()
        if name in self._entries and not replace:
            raise ConfigError(f"{self.key}: {name!r} is registered already")
        self._entries[name] = target
        self._resolved.pop(name, None)

    def names(self) -> tuple[str, ...]:
        self._load_plugins()
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self):  # noqa: ANN204 - iterating a registry gives its names
        return iter(self.names())

    def check(self, name: str, key: str | None = None) -> None:
        """Raise ConfigError naming the key and the choices when ``name`` is not registered.

        A name of the form ``package.module:attribute`` (an import path) is registered on first use, so a
        plugin works without an entry point too.
        """
        if name not in self and self.allow_paths and ":" in name:
            resolve(name)  # a ConfigError naming the path if it does not import
            self._entries[name] = name
        if name not in self:
            raise ConfigError(f"{key or self.key}: {name!r} is not one of {', '.join(self.names())}")

    def get(self, name: str) -> Any:
        self.check(name)
        if name not in self._resolved:
            target = self._entries[name]
            self._resolved[name] = resolve(target) if isinstance(target, str) else target
        return self._resolved[name]


@dataclass(frozen=True)
class ProducerEntry:
    """A producer kind: its config dataclass (the ``generator`` section), its trainer class and the class
    that loads its frozen sampler from a finished run (by default the trainer's ``Sampler`` attribute;
    None: the kind publishes nothing to sample).

    All are import paths (or the objects), so that loading a config never imports model code.
    """

    config: Any
    impl: Any
    sampler: Any = None

    def config_class(self) -> type:
        return resolve(self.config) if isinstance(self.config, str) else self.config

    def impl_class(self) -> type:
        return resolve(self.impl) if isinstance(self.impl, str) else self.impl

    def sampler_class(self) -> type | None:
        if self.sampler is not None:
            return resolve(self.sampler) if isinstance(self.sampler, str) else self.sampler
        return getattr(self.impl_class(), "Sampler", None)


#: the trainer of a producer that only samples (``samplers/frozen.py``): its samples join every step
FROZEN_TRAINER = "synthkit.producers.frozen:FrozenProducer"


class _EntryRegistry(Registry):
    def get(self, name: str) -> ProducerEntry:
        entry = super().get(name)
        if not isinstance(entry, ProducerEntry):
            cfg = getattr(entry, "Config", None)
            if cfg is None:
                raise ConfigError(
                    f"{self.key}={name!r} is registered as {entry!r}, which is neither a ProducerEntry "
                    "nor a class with a Config attribute"
                )
            if getattr(entry, "for_training", None) is None and getattr(entry, "make", None) is not None:
                entry = ProducerEntry(config=cfg, impl=FROZEN_TRAINER, sampler=entry)  # a sampler alone
            else:
                entry = ProducerEntry(config=cfg, impl=entry)
            self._resolved[name] = entry
        return entry


#: ``generator.kind``: what makes the synthetic data (synthkit.producers.base.Producer).
PRODUCERS = _EntryRegistry(
    "generator.kind",
    {
        "cgan": ProducerEntry(
            "synthkit.producer_configs.cgan:CGanConfig", "synthkit.producers.cgan:CGanProducer"
        ),
        "diffusion": ProducerEntry(
            "synthkit.producer_configs.diffusion:DiffusionConfig",
            "synthkit.producers.diffusion:DiffusionProducer",
        ),
        "naive": ProducerEntry(
            "synthkit.producer_configs.naive:NaiveConfig", "synthkit.producers.naive:NaiveProducer"
        ),
    },
    group="synthkit.producers",
    allow_paths=True,
)

#: ``objective.name``: how projections are scored (synthkit.objectives.base.Objective).
OBJECTIVES = _EntryRegistry(
    "objective.name",
    {
        "simclr": ProducerEntry("synthkit.config:SimCLRConfig", "synthkit.objectives.simclr:SimCLR"),
        "moco": ProducerEntry("synthkit.config:MoCoConfig", "synthkit.objectives.moco:MoCo"),
    },
    group="synthkit.objectives",
    allow_paths=True,
)

#: ``encoder.backbone``: ``(in_channels, width) -> nn.Module`` with an ``out_dim``.
BACKBONES = Registry(
    "encoder.backbone",
    {
        "convnet": "synthkit.encoders.backbones:convnet",
        "resnet18": "synthkit.encoders.backbones:resnet18",
        "resnet50": "synthkit.encoders.backbones:resnet50",
    },
    group="synthkit.backbones",
)

#: ``data.name``: ``(DataConfig, split) -> ImageSet``.
SOURCES = Registry(
    "data.name",
    {
        "digits": "synthkit.data.sources:load_digits",
        "fashion-mnist": "synthkit.data.sources:load_fashion_mnist",
        "cifar10": "synthkit.data.sources:load_cifar",
        "cifar100": "synthkit.data.sources:load_cifar",
        "folder": "synthkit.data.sources:load_folder",
    },
)

#: ``audit --extractor``: the feature spaces of an audit (synthkit.metrics.extractors).
EXTRACTORS = Registry(
    "audit.extractor",
    {
        "encoder": "synthkit.metrics.extractors:encoder_extractor",
        "classifier": "synthkit.metrics.extractors:classifier_extractor",
        "inception": "synthkit.metrics.extractors:inception_extractor",
        "pixels": "synthkit.metrics.extractors:pixels_extractor",
    },
)
