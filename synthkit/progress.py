"""Phases a user waits for: a log line when one starts, one when it ends, and a bar on a terminal between.

GAN pre-training, diffusion stage 1, a diffusion pool's sampling, an export, an extractor's training: each is
one :class:`Phase`, so a batch log (``--no-progress``, or stderr redirected) reads::

    ... INFO synthkit.producers.cgan: pretraining cGAN: 400 steps ...
    ... INFO synthkit.producers.cgan: pretraining cGAN: done in 58.2 s (loss_d 1.31, loss_g_adv 0.822)

and a terminal shows a tqdm bar between the two lines (``synthkit.logs.show_progress`` decides; the log
handler writes through ``tqdm.write``, so lines never tear the bar). Only the process that logs (the main
process of a launch) logs or draws.

Example::

    >>> import logging
    >>> with Phase("counting", 3, "item", progress=False, logger=logging.getLogger("x")) as phase:
    ...     for i in range(3):
    ...         phase.update()
    ...     phase.result(last=i)
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

from tqdm.auto import tqdm

from synthkit.logs import format_values

__all__ = ["Phase", "duration"]


def duration(seconds: float) -> str:
    """``0.4 s``, ``58.2 s``, ``2 min 05 s``: a duration to read at a glance."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


class Phase:
    """One phase of work: ``NAME: TOTAL UNITs DETAIL ...`` when entered, ``NAME: done in T (VALUES)`` on a
    normal exit (nothing on an exception: the error says what happened), a bar of ``total`` in between.

    Args:
        name: what the phase does, as the log lines and the bar name it (``pretraining cGAN``).
        total: units of work (steps, images), or None when unknown.
        unit: the unit's name (``step``, ``img``); plural in the start line.
        progress: draw the bar (the caller's ``--no-progress`` and terminal check, ``show_progress``).
        logger: where the two lines go (the caller's module logger).
        main: whether this process logs and draws (``accelerator.is_main_process``).
        detail: text after the count in the start line (``, batch 64``).
    """

    def __init__(
        self,
        name: str,
        total: int | None,
        unit: str = "step",
        *,
        progress: bool,
        logger: logging.Logger,
        main: bool = True,
        detail: str = "",
    ) -> None:
        self.name, self.total, self.unit, self.detail = name, total, unit, detail
        self.logger, self.main = logger, main
        self.values: dict[str, Any] = {}
        self.bar = tqdm(total=total, desc=name, unit=unit, disable=not (progress and main), leave=False)
        self.started = time.perf_counter()

    def start(self) -> Phase:
        """Log the start line and start the clock (what entering the ``with`` block does)."""
        if self.main:
            count = "" if self.total is None else f" {self.total} {self.unit}{'s' if self.total != 1 else ''}"
            self.logger.info("%s:%s%s ...", self.name, count, self.detail)
        self.started = time.perf_counter()
        return self

    def close(self) -> None:
        """Close the bar and log the end line (what leaving the ``with`` block normally does)."""
        self.bar.close()
        if self.main:
            shown = f" ({format_values(self.values)})" if self.values else ""
            self.logger.info("%s: done in %s%s", self.name, duration(self.seconds), shown)

    def __enter__(self) -> Phase:
        return self.start()

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.bar.update(n)

    def result(self, **values: Any) -> None:
        """Values the end line reports (last losses, means), in the order given."""
        self.values.update(values)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.bar.close()
