"""Scalar flag checks shared by every package: an integer in a range, a finite real in a range.

Each raises :class:`~hessaudit.errors.HessauditError` naming the flag and the accepted range
(``--input-size 0: must be an integer between 1 and 4096``). No torch, no numpy.
"""

from __future__ import annotations

import math
from typing import Any

from hessaudit.errors import HessauditError

__all__ = ["check_int", "check_real", "is_int", "is_real"]


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool`` (finite or not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(
    flag: str, value: Any, *, low: int = 1, high: int | None = None, optional: bool = False
) -> None:
    """``value`` is an integer in [low, high] (None allowed when ``optional``)."""
    if value is None and optional:
        return
    if not is_int(value) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise HessauditError(f"{flag} {value}: must be an integer {bound}")


def check_real(
    flag: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    """``value`` is a finite number within the given bounds (None allowed when ``optional``)."""
    if value is None and optional:
        return
    ok = is_real(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {high:g}")
        what = "a finite number" + (" " + " and ".join(parts) if parts else "")
        shown = f"{value:g}" if is_real(value) else repr(value)
        raise HessauditError(f"{flag} {shown}: must be {what}")
