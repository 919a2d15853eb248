"""Progress for logs: plain lines on stderr when it is not a terminal (CI jobs, ``2> log``).

A rich progress bar draws nothing into a log file, so a several-minute audit would print
nothing until it ends. :class:`PlainProgress` writes a line after a step instead, at most one
every :data:`INTERVAL_S` seconds, plus a closing line for the last step once any line was
written::

    progress: auditing layers 5/21 (layer3.0.conv1.weight) 12.3 s elapsed, ~40 s left

A run that ends within :data:`INTERVAL_S` seconds prints no progress at all: a log gains
nothing from it, and an error then stays the only line on stderr. The time left is the
elapsed time per finished step times the steps left. Labels come from inputs (layer names),
so control and other non-printable characters are shown escaped.

This module also records, on an exception that leaves a progress display, how far the steps
got (:func:`note_phase`), so that an out-of-memory message can say where memory ran out.
It imports nothing heavy: the CLI's error path uses it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import TextIO

INTERVAL_S = 10.0
_LABEL_CHARS = 120
_PHASE = "hessaudit_phase"


def printable(text: str, limit: int = _LABEL_CHARS) -> str:
    """``text`` on one line: non-printable characters escaped (``\\x1b``, ``\\n``), shortened."""
    shown = text if text.isprintable() else json.dumps(text)[1:-1]
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class PlainProgress:
    """``update(done, total, label)`` writes rate-limited ``progress:`` lines to ``stream``.

    With ``closing_line=False`` the last step gets no line of its own (for steps whose end is
    announced by another line, such as the epochs of ``finetune``).
    """

    def __init__(
        self,
        description: str,
        *,
        stream: TextIO | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        closing_line: bool = True,
    ) -> None:
        self.description = description
        self._stream = stream
        self._interval = INTERVAL_S if interval is None else interval
        self._clock = clock
        self._closing_line = closing_line
        self._start = clock()
        self._last_line: float | None = None

    def update(self, done: int, total: int, label: str = "") -> None:
        now = self._clock()
        since = now - (self._start if self._last_line is None else self._last_line)
        closing = self._closing_line and self._last_line is not None and done >= total
        if since < self._interval and not closing:
            return
        self._last_line = now
        elapsed = now - self._start
        line = f"progress: {self.description} {done}/{total}"
        if label:
            line += f" ({printable(label)})"
        line += f" {duration(elapsed)} elapsed"
        if 0 < done < total:
            line += f", ~{duration(elapsed / done * (total - done))} left"
        stream = self._stream if self._stream is not None else sys.stderr
        with contextlib.suppress(OSError, ValueError):
            stream.write(line + "\n")
            stream.flush()


class StepTracker:
    """Remembers the last ``update(done, total, label)`` and forwards it to a display."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.done = 0
        self.total: int | None = None
        self.label = ""
        self._display: Callable[[int, int, str], None] | None = None

    def forward_to(self, display: Callable[[int, int, str], None]) -> StepTracker:
        self._display = display
        return self

    def update(self, done: int, total: int, label: str) -> None:
        self.done, self.total, self.label = done, total, label
        if self._display is not None:
            self._display(done, total, label)

    def phase(self) -> str:
        """``auditing layers (3 of 21 done; last: conv1.weight)``."""
        if self.total is None:
            return f"{self.description} (none done yet)"
        last = f"; last: {printable(self.label, 60)}" if self.label else ""
        return f"{self.description} ({self.done} of {self.total} done{last})"


def note_phase(exc: BaseException, phase: str) -> None:
    """Record on ``exc`` what the command was doing (the innermost phase wins)."""
    if getattr(exc, _PHASE, None) is None:
        with contextlib.suppress(AttributeError, TypeError):
            setattr(exc, _PHASE, phase)


def phase_of(exc: BaseException) -> str | None:
    phase = getattr(exc, _PHASE, None)
    return phase if isinstance(phase, str) else None
