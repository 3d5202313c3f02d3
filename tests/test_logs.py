"""A batch job's log: one readable line per epoch through ``logging``, with or without progress bars, and
no progress-bar frames when stderr is not a terminal."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest

from synthkit.cli import main
from synthkit.logs import LOG_LINE, configure, epoch_line, format_values, show_progress

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "pipelines" / "tiny.yaml")
EPOCH = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO synthkit\.training\.loop: epoch (\d)/2 \(step \d+, "
)


@pytest.mark.parametrize("flags", [["--no-progress"], []])
def test_a_train_log_has_one_line_per_epoch_and_no_bar_frames(
    flags: list[str], tmp_path: Path, capsys
) -> None:
    assert main(["train", TINY, "--out", str(tmp_path / "run"), "--train.trackers=[]", *flags]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in err  # stderr is not a terminal here: no bars, whatever the flags
    epochs = [m.group(1) for line in err.splitlines() if (m := EPOCH.match(line))]
    assert epochs == ["1", "2"], err
    line = next(line for line in err.splitlines() if EPOCH.match(line))
    assert "loss_cl " in line and "knn_acc " in line and "{" not in line  # readable, not a dict
    assert out.startswith("trained 2 epochs")


def test_configure_is_idempotent(caplog) -> None:
    stream = io.StringIO()
    configure(stream=stream)
    configure(stream=stream)  # a second call replaces the first handler
    with caplog.at_level("INFO"):
        logging.getLogger("synthkit.test").info("hello")
    assert stream.getvalue().count("hello") == 1
    assert LOG_LINE.match(stream.getvalue())
    assert "hello" in caplog.text  # records still reach the root logger's handlers


def test_progress_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert show_progress(True, Tty()) is True
    assert show_progress(False, Tty()) is False
    assert show_progress(True, io.StringIO()) is False


def test_epoch_line_format() -> None:
    line = epoch_line(2, 30, 22, {"epoch": 2, "epoch_loss_cl": 4.123456, "knn_acc": 0.8, "epoch_n": 3}, 3.14)
    assert line == "epoch 2/30 (step 22, 3.1 s): loss_cl 4.123, knn_acc 0.8, n 3"
    assert format_values({"a": float("nan"), "b": True}) == "a nan, b True"
