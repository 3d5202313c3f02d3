"""The training step's hot path: host syncs counted, no per-sample loops, records read once per log interval.

A host sync is an ``aten._local_scalar_dense`` (what ``.item()``, ``float(t)``, ``bool(t)`` and ``int(t)``
of a tensor run): on a GPU the host waits there for every queued kernel. They are counted here under a
``TorchDispatchMode`` while ``train()`` runs, between the starts of consecutive encoder steps (everything of
one iteration: data, the producer's contribution, the step, the loop's bookkeeping), in the last epoch (past
the warm-ups: the synthetic chunks ride along) and away from the epoch's end and from logging steps.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from synthkit.cli import main
from synthkit.logs import error_lines
from synthkit.training import steps as steps_module
from synthkit.training.loop import train
from tests.conftest import TINY_PIPELINE, tiny_config

#: host syncs allowed in an iteration that does not log (plain SimCLR and HSG+HPG alike; measured: 0)
SYNC_BUDGET = 0
#: ... and in an iteration that logs (the records' one read; measured: 1)
LOGGING_SYNC_BUDGET = 1

QUIET = ["--train.knn_every=0", "--train.checkpoint_every=100", "--train.trackers=[]"]


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.syncs = self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


def _per_iteration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> tuple[list, list]:
    """(syncs, aten ops) of each iteration of the last epoch but its last, under ``train()``."""
    cfg = tiny_config(*QUIET, *overrides)
    counter, marks = _Count(), []
    original = steps_module.EncoderStep.__call__

    def marked(self, *args, **kwargs):
        marks.append((counter.syncs, counter.ops))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(steps_module.EncoderStep, "__call__", marked)
    with counter:
        train(cfg, tmp_path / "run", progress=False)
    last = marks[-(len(marks) // cfg.train.epochs) :]
    pairs = list(zip(last, last[1:], strict=False))
    return [b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs]


@pytest.mark.parametrize(
    "overrides",
    [["--hsg.enabled=false"], ["--hpg.enabled=true", "--hpg.warmup_epochs=1"]],
    ids=["plain", "hsg+hpg"],
)
def test_an_iteration_that_does_not_log_never_waits_for_the_device(
    overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs, _ = _per_iteration(tmp_path, monkeypatch, "--train.log_every=100000", *overrides)
    assert len(syncs) >= 2
    assert max(syncs) <= SYNC_BUDGET, syncs


def test_a_logging_iteration_reads_the_records_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs, _ = _per_iteration(tmp_path, monkeypatch, "--train.log_every=1", "--hpg.enabled=true")
    assert max(syncs) <= LOGGING_SYNC_BUDGET, syncs


def test_a_step_launches_as_many_ops_at_any_batch_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No per-sample loop anywhere in a joint step (the views' crops were one): doubling the batch leaves the
    number of aten ops of an iteration unchanged."""
    common = ["--train.log_every=100000", "--hpg.enabled=true", "--hpg.warmup_epochs=1", "--data.subset=256"]
    _, small = _per_iteration(tmp_path / "a", monkeypatch, "--train.batch_size=32", *common)
    _, large = _per_iteration(tmp_path / "b", monkeypatch, "--train.batch_size=64", *common)
    assert abs(min(large) - min(small)) <= 0.02 * min(small), (small, large)


def test_divergence_is_caught_at_the_next_read_and_named_by_its_step(tmp_path: Path, capsys) -> None:
    """Records are read every train.log_every steps: a run that diverges still stops with the one-line error,
    naming the step where a record first went non-finite (the same step whether every step is read or not),
    and publishes nothing."""
    named = []
    for log_every in (1, 100):
        run = tmp_path / f"run{log_every}"
        argv = ["train", str(TINY_PIPELINE), "--out", str(run), "--no-progress", "--train.lr=1e30"]
        code = main([*argv, "--hsg.enabled=false", f"--train.log_every={log_every}", *QUIET])
        err = error_lines(capsys.readouterr().err)
        assert code == 2 and len(err) == 1 and "training diverged at step" in err[0], err
        assert not (run / "final").exists()
        named.append(int(re.search(r"at step (\d+)", err[0]).group(1)))  # type: ignore[union-attr]
    assert named[0] == named[1]


def test_fp16_with_the_cgan_producers_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    code = main(["train", str(TINY_PIPELINE), "--out", str(run), "--train.mixed_precision=fp16"])
    err = error_lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1, err
    assert "train.mixed_precision: fp16 cannot train the cGAN producers" in err[0] and "bf16" in err[0]
    assert not run.exists()
