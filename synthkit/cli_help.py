"""The config reference of ``synthkit train --help`` and ``synthkit config --help``, read off the dataclasses.

Every section of :class:`~synthkit.config.PipelineConfig` with every key, its type and its default, in
the order the dataclasses declare them, so the help cannot drift from what the config accepts. The two
tagged sections list each kind's keys: ``generator`` by ``generator.kind`` (the kinds of the producer
registry, third-party plugins included) and ``objective`` by ``objective.name``.
"""

from __future__ import annotations

import dataclasses
import textwrap
import types
import typing
from typing import Any, Union

from synthkit.config import GeneratorConfig, ObjectiveConfig, PipelineConfig
from synthkit.registry import OBJECTIVES, PRODUCERS

__all__ = ["OVERRIDES", "config_reference", "section_keys", "type_text", "value_text"]

OVERRIDES = (
    "Any config key can be set on the command line as --section.key=value (the value is YAML): "
    "--train.epochs=5, --views.crop_scale=[0.2,1.0], --train.trackers=[tensorboard,mlflow], "
    "--data.root=null. An unknown key or a value of the wrong type is a one-line error naming the key. "
    "Switching a tagged section's kind (--generator.kind=diffusion) starts that section afresh."
)


def type_text(tp: Any) -> str:
    """``int``, ``str | null``, ``[float, float]``, ``[str, ...]``: a type as a YAML writer sees it."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_text(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if args and args[-1] is Ellipsis:
            return f"[{type_text(args[0])}, ...]"
        return "[" + ", ".join(type_text(a) for a in args) + "]"
    return getattr(tp, "__name__", str(tp))


def value_text(value: Any) -> str:
    """A default as it is written in YAML: ``null``, ``true``, ``[0.3, 1.0]``, ``''``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if value == "":
        return "''"
    return str(value)


def _summary(cls: type) -> str:
    """The docstring's first clause, without reST markup (the docstring itself says the rest)."""
    doc = " ".join((cls.__doc__ or "").strip().split("\n\n", 1)[0].split()).replace("``", "")
    for stop in ("; ", ". "):
        doc = doc.split(stop, 1)[0]
    return doc.rstrip(".")


def section_keys(cls: type) -> list[tuple[str, str, str]]:
    """(key, type, default) of every field of a section's dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # pragma: no cover - every config key has a default
            default = None
        rows.append((f.name, type_text(hints[f.name]), value_text(default)))
    return rows


def _table(rows: list[tuple[str, str, str]], indent: str) -> list[str]:
    wk = max(len(r[0]) for r in rows)
    wt = max(len(r[1]) for r in rows)
    return [f"{indent}{k:<{wk}}  {t:<{wt}}  {d}".rstrip() for k, t, d in rows]


def _kinds(base: type) -> list[tuple[str, type | str]]:
    """The kinds of a tagged section and each one's config class (or why it cannot be read)."""
    registry = PRODUCERS if base is GeneratorConfig else OBJECTIVES
    out: list[tuple[str, type | str]] = []
    for name in registry.names():
        try:
            out.append((name, registry.get(name).config_class()))
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break --help for everyone
            out.append((name, f"cannot be read: {' '.join(str(e).split())[:120]}"))
    return out


def config_reference() -> str:
    """The text: one block per section, ``key  type  default`` per line; tagged sections by kind."""
    hints = typing.get_type_hints(PipelineConfig)
    lines = ["config sections and keys (key, type, default):", ""]
    for f in dataclasses.fields(PipelineConfig):
        cls = hints[f.name]
        if cls in (GeneratorConfig, ObjectiveConfig):
            tag = cls.TAG
            kinds = _kinds(cls)
            lines.append(
                f"{f.name}:  keys by {f.name}.{tag} ({' | '.join(k for k, _ in kinds)}); "
                f"default {value_text(cls.__dataclass_fields__[tag].default)}"
            )
            for name, sub in kinds:
                if isinstance(sub, str):
                    lines.append(f"  {tag}={name}: {sub}")
                    continue
                lines.append(f"  {tag}={name}: {_summary(sub)}")
                lines += _table(section_keys(sub), "    ")
        else:
            lines.append(f"{f.name}:  {_summary(cls)}")
            lines += _table(section_keys(cls), "  ")
        lines.append("")
    lines.append(textwrap.fill(OVERRIDES, 100))
    return "\n".join(lines)
