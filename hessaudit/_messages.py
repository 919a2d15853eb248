"""Small pieces of the one-line error messages that every loader writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def oneline(exc: BaseException) -> str:
    """``Type: message`` on one line, at most about 200 characters of the message."""
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def few(names: Sequence[Any], n: int = 5) -> str:
    """The first ``n`` names, then how many there are in all."""
    shown = ", ".join(str(x) for x in list(names)[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")
