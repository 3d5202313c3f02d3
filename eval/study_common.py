"""Helpers the studies under eval/ share: training a run once (with its cost), scoring frozen features, and
summarising per-seed values. Used by ``method_table.py`` and ``teach_study.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from synthkit.config import EvalConfig, load_pipeline
from synthkit.metrics.knn import knn_accuracy
from synthkit.metrics.linear_probe import linear_probe_accuracy
from synthkit.training.loop import train


def summarise(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


class LoadSampler:
    """The machine's 1-minute load average, sampled every ``every`` seconds in a daemon thread while a run
    trains: the load a timing was taken under (the CPU is shared)."""

    def __init__(self, every: float = 30.0) -> None:
        self.every, self.samples = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])


def train_once(run: Path, pipeline: Path, overrides: list[str]) -> float:
    """Train ``run`` unless it finished before; returns the training wall time (recorded in the run's
    ``wall_time.json`` with the process CPU time and the machine's load while it trained)."""
    return train_timed(run, pipeline, overrides)["seconds"]


def train_timed(run: Path, pipeline: Path, overrides: list[str]) -> dict[str, Any]:
    """Like :func:`train_once`, returning the whole timing record: ``seconds`` (wall), ``cpu_seconds``
    (this process's CPU time: the run trains in-process, so with one thread this is its compute), and
    ``load_mean``/``load_max`` (1-minute load average sampled every 30 s during training)."""
    timing = run / "wall_time.json"
    if (run / "final").is_dir() and timing.exists():
        return json.loads(timing.read_text())
    if run.exists():  # an interrupted run: start it again from scratch for a clean wall time
        shutil.rmtree(run)
    cfg = load_pipeline(pipeline, overrides)
    t0, c0 = time.perf_counter(), time.process_time()
    with LoadSampler() as load:
        train(cfg, run, progress=False)
    record = {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "load_mean": statistics.fmean(load.samples),
        "load_max": max(load.samples),
        "threads": torch.get_num_threads(),
    }
    timing.write_text(json.dumps(record))
    return record


def probe_scores(
    f_fit: torch.Tensor,
    y_fit: torch.Tensor,
    f_eval: torch.Tensor,
    y_eval: torch.Tensor,
    ev: EvalConfig,
    *,
    knn_k: int | None = None,
    probe_batch_size: int = 1024,
    knn: bool = True,
) -> dict[str, float]:
    """``linear`` (and ``knn``) accuracy of features ``f_eval`` by a linear probe (a weighted kNN) fitted on
    ``f_fit``: the eval config's probe settings, kNN temperature, and ``knn_k`` (default: its k)."""
    out = {
        "linear": linear_probe_accuracy(
            f_fit,
            y_fit,
            f_eval,
            y_eval,
            epochs=ev.probe_epochs,
            lr=ev.probe_lr,
            weight_decay=ev.probe_weight_decay,
            batch_size=probe_batch_size,
            seed=0,
        )
    }
    if knn:
        out["knn"] = knn_accuracy(
            f_fit, y_fit, f_eval, y_eval, k=knn_k or ev.knn_k, temperature=ev.knn_temperature
        )
    return out


Featurize = Callable[[torch.Tensor], torch.Tensor]
