"""Logging: one ``synthkit`` logger hierarchy, one-line records, and progress bars only on a terminal.

Library code logs through ``logging.getLogger(__name__)`` (``synthkit.training.loop``, ``synthkit.export``,
...) and never configures logging itself, as the logging HOWTO asks of libraries. The command line calls
:func:`configure`; a notebook that wants the same lines calls it too (``synthkit.logs.configure()``).

Why the pieces look as they do:

* Progress bars and log lines share stderr. While a tqdm bar is drawn, a plain ``print`` lands inside the
  bar's line; the handler therefore writes through ``tqdm.write``, which clears the bars, writes the line
  and redraws them (what ``tqdm.contrib.logging`` does, in six lines rather than a context manager).
* Bars are drawn only when stderr is a terminal (:func:`show_progress`). Redirected to a file, every redraw
  is one more carriage-return frame: a diffusion quickstart left 556 of them (37 KB) in a batch log. The
  one-line epoch summaries are log records, so they are there with or without bars (``--no-progress``
  turns off bars, never the summaries).
* Python warnings (``warnings.warn``: a resumed shard rewritten, corrupt samples skipped) are routed to the
  ``py.warnings`` logger, so they too are one line with a time stamp instead of a two-line source excerpt.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm.auto import tqdm

__all__ = ["FORMAT", "LOG_LINE", "configure", "epoch_line", "error_lines", "format_values", "show_progress"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
ROOT = "synthkit"
#: a line :func:`configure`'s handler writes (what separates log records from a command's error line)
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


class TqdmHandler(logging.StreamHandler):
    """A stream handler that writes each record with ``tqdm.write``, so it never tears a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "py.warnings":  # warnings.formatwarning adds the source line: the warning alone
            record.msg, record.args = str(record.getMessage()).split("\n", 1)[0], None
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller (logging.Handler's rule)
            self.handleError(record)


def configure(level: int | str = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Give the ``synthkit`` logger (and ``py.warnings``) one handler on ``stream`` (default stderr).

    Idempotent: a handler installed by an earlier call is replaced, so calling it twice (a notebook cell run
    again, ``main`` called in a test) never doubles the lines. Records still propagate to the root logger,
    so an application's own handlers (and pytest's ``caplog``) see them; an application that configures
    the root logger itself need not call this at all.
    """
    handler = TqdmHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler._synthkit = True  # type: ignore[attr-defined]  # marks ours for the next call
    for name in (ROOT, "py.warnings"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_synthkit", False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
    logging.captureWarnings(True)
    return handler


def show_progress(requested: bool, stream: IO[str] | None = None) -> bool:
    """Whether to draw progress bars: when asked for and ``stream`` (default stderr) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return requested and stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


def _number(value: float) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def format_values(values: dict[str, Any], skip: Iterable[str] = ()) -> str:
    """``loss_cl 4.123, lambda_hard 0.5, ...``: numbers to 4 significant digits, in the record's order."""
    skipped = set(skip)
    return ", ".join(f"{k} {_number(v)}" for k, v in values.items() if k not in skipped)


def epoch_line(epoch: int, epochs: int, step: int, record: dict[str, Any], seconds: float) -> str:
    """The one-line summary of an epoch: ``epoch 2/30 (step 22, 3.1 s): loss_cl 4.12, ..., knn_acc 0.80``.

    ``record`` is the epoch's metrics record; its ``epoch_`` prefixes (means over the epoch's steps) are
    dropped for reading, the ``epoch`` counter is the line's head.
    """
    shown = {k.removeprefix("epoch_"): v for k, v in record.items() if k != "epoch"}
    # throughput: images/s at the head; the epoch's time is there already, its step time follows from both
    rate = shown.pop("images_per_s", None)
    shown.pop("time_s", None)
    shown.pop("step_time_s", None)
    speed = f", {rate:.0f} img/s" if rate is not None else ""
    return f"epoch {epoch}/{epochs} (step {step}, {seconds:.1f} s{speed}): {format_values(shown)}"


def error_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are not log records: a failed command's one error line."""
    return [line for line in stderr.strip().splitlines() if not LOG_LINE.match(line)]
