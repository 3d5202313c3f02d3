"""``synthkit eval``: frozen-encoder accuracy of a run (weighted kNN and a linear probe).

Both fit on backbone features h(x) of a labeled train split and score the test split. By default the
train split is the run's own training data (same subset, now with labels); ``full_train=True`` uses the
whole train split. For ``digits`` the test split is the fixed stratified held-out 20%.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from synthkit.config import DataConfig
from synthkit.data.sources import DataSourceError, ImageSet, load_source
from synthkit.devices import resolve_device
from synthkit.encoders.model import extract_features
from synthkit.errors import ConfigError
from synthkit.metrics.knn import knn_accuracy, knn_k_problem
from synthkit.metrics.linear_probe import linear_probe_accuracy
from synthkit.run_files.final import load_final

logger = logging.getLogger(__name__)


def evaluate(
    run_dir: str,
    data: str | None = None,
    *,
    root: str | None = None,
    full_train: bool = False,
    seed: int = 0,
    device: str | None = None,
    test_limit: int | None = None,
    knn_k: int | None = None,
) -> dict[str, Any]:
    """kNN and linear-probe test accuracy of the run's frozen encoder on ``data`` (default: the run's).

    ``device``: where features are extracted and the probes fitted (``cuda``, ``cpu``, ...); by default the
    accelerator when there is one. ``test_limit``: score the first that many test images only (smoke runs).
    ``knn_k`` overrides the run's ``eval.knn_k``. A k above the train split's images per class is warned
    about (a log record, and ``knn_warning`` in the result): the vote is then biased low
    (:func:`synthkit.metrics.knn.knn_k_problem`).
    """
    _check_knn_k(knn_k)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    art = load_final(run_dir)
    cfg = art.cfg
    data_cfg = _eval_data(cfg.data, art.encoder.in_channels, data, root, full_train)
    train, test = load_source(data_cfg, "train"), _first(load_source(data_cfg, "test"), test_limit)
    if train.labels is None or test.labels is None:
        raise DataSourceError(f"data set {data_cfg.name!r} has no labels: kNN and linear probe need them")
    art.encoder.to(dev)
    f_train = extract_features(art.encoder, train.images, device=dev).to(dev)
    f_test = extract_features(art.encoder, test.images, device=dev).to(dev)
    ev = cfg.eval
    k = ev.knn_k if knn_k is None else knn_k
    warning = knn_k_problem(k, train.labels, "--knn-k" if knn_k is not None else "eval.knn_k")
    if warning:
        logger.warning("eval: %s (--knn-k K sets it)", warning)
    knn = knn_accuracy(f_train, train.labels, f_test, test.labels, k=k, temperature=ev.knn_temperature)
    linear = linear_probe_accuracy(
        f_train,
        train.labels,
        f_test,
        test.labels,
        epochs=ev.probe_epochs,
        lr=ev.probe_lr,
        weight_decay=ev.probe_weight_decay,
        seed=seed,
    )
    return {
        "run": str(run_dir),
        "data": data_cfg.name,
        "train_images": len(train),
        "test_images": len(test),
        "knn_accuracy": knn,
        "linear_accuracy": linear,
        "knn_k": k,
        "knn_temperature": ev.knn_temperature,
        "knn_warning": warning,
        "encoder_hash": art.meta["hashes"]["encoder"],
        "hsg": cfg.hsg.enabled,
        "device": str(dev),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _check_knn_k(knn_k: int | None) -> None:
    if knn_k is not None and (isinstance(knn_k, bool) or not isinstance(knn_k, int) or knn_k < 1):
        raise ConfigError(f"--knn-k must be a positive integer, got {knn_k!r}")


def _eval_data(
    run_data: DataConfig, channels: int, data: str | None, root: str | None, full_train: bool
) -> DataConfig:
    """The data to evaluate on: the run's (``root`` may move it), or another source ``data`` (its whole
    train split, from ``root``); always at the channel count the encoder was trained on."""
    data_cfg = run_data
    if data is not None and data != run_data.name:
        data_cfg = dataclasses.replace(run_data, name=data, root=root, subset=None)
    elif root is not None:
        data_cfg = dataclasses.replace(data_cfg, root=root)
    data_cfg = dataclasses.replace(data_cfg, channels=channels)
    if full_train:
        data_cfg = dataclasses.replace(data_cfg, subset=None)
    return data_cfg


def _first(split: ImageSet, limit: int | None) -> ImageSet:
    """The first ``limit`` images of a split (all of them without a limit)."""
    if limit is None:
        return split
    labels = split.labels[:limit] if split.labels is not None else None
    return type(split)(split.images[:limit], labels, split.name, split.classes)
