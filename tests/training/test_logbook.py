"""A run's ``metrics.jsonl`` read back and cut back to a checkpoint's step (``training/logbook.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accelerate import Accelerator

from synthkit.errors import OutputError, RunError
from synthkit.training.logbook import Logbook


@pytest.fixture
def logbook(tmp_path: Path) -> Logbook:
    return Logbook(Accelerator(cpu=True), tmp_path, tmp_path / "metrics.jsonl", trackers=[])


def test_records_are_logged_at_the_encoder_step_and_cut_back_to_a_checkpoint(logbook: Logbook) -> None:
    for step in (1, 2, 3):
        logbook.step = step
        logbook.log({"loss_cl": 1.0 / step}, namespace="train")
    logbook.log({"epoch": 1}, step=2, namespace="epoch")
    assert [(r["step"], sorted(r)) for r in logbook.records()] == [
        (1, ["loss_cl", "step"]),
        (2, ["loss_cl", "step"]),
        (3, ["loss_cl", "step"]),
        (2, ["epoch", "step"]),
    ]
    with open(logbook.metrics, "a") as f:
        f.write('{"step": 4, "loss')  # an append a kill cut short
    assert [r["step"] for r in logbook.records()] == [1, 2, 3, 2]
    logbook.truncate(2)  # resumed from a checkpoint at step 2: the later steps are logged again
    lines = logbook.metrics.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 2]


def test_a_damaged_record_that_is_not_the_last_is_one_line_naming_it(logbook: Logbook) -> None:
    logbook.metrics.write_text('{"step": 1}\n[1, 2]\n{"step": 3}\n')
    with pytest.raises(RunError, match=r"metrics.jsonl: line 2 is not a metrics record .*fix or delete it"):
        logbook.records()
    logbook.metrics.write_text('{"step": 1}\n{"step": "two"}\n{"step": 3}\n')
    with pytest.raises(RunError, match="line 2 is not a metrics record"):
        logbook.records()


def test_a_log_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    logbook = Logbook(Accelerator(cpu=True), tmp_path, tmp_path / "missing" / "metrics.jsonl", trackers=[])
    with pytest.raises(OutputError, match=r"cannot write .*metrics.jsonl"):
        logbook.log({"loss_cl": 1.0})
