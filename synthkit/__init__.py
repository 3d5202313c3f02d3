"""synthkit: synthetic training data that teaches contrastive vision models.

The public API (imported lazily, so ``synthkit --help`` stays fast)::

    from synthkit import load_pipeline, train, generate, evaluate, quickstart
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "load_pipeline": ("synthkit.config", "load_pipeline"),
    "PipelineConfig": ("synthkit.config", "PipelineConfig"),
    "train": ("synthkit.training.loop", "train"),
    "generate": ("synthkit.export", "generate"),
    "evaluate": ("synthkit.evaluate", "evaluate"),
    "quickstart": ("synthkit.quickstart", "quickstart"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'synthkit' has no attribute {name!r}")
