"""The one number format of every report (terminal, markdown, HTML): enough digits to trust.

:func:`fmt_number` shows :data:`SIGNIFICANT` significant digits, and more (up to the 17 that
identify any float64) whenever fewer would make the value look like an integer it is not:
a held-out loss of 1.0002, or of 1.0000001, is never shown as ``1`` (only differences at the
level of float64 rounding, relative 1e-12, are left out). :func:`fmt_pair` formats
two numbers with the same, smallest number of digits that tells them apart (a gate's observed
value and its threshold: ``1.2000001`` vs ``1.2``, never ``1.2`` vs ``1.2`` for a failing
gate).

Every number a report shows goes through this module; the others are for fixed kinds of
value: :func:`fmt_signed` and :func:`fmt_percent` (changes), :func:`fmt_fraction` (a share or
an accuracy in percent), :func:`fmt_metric` (the short numbers of training and tuning logs)
and :func:`fmt_coefficient` (a correlation).
"""

from __future__ import annotations

import math
from typing import Any

#: Significant digits shown by default.
SIGNIFICANT = 6
#: Significant digits of a training or tuning metric (loss, accuracy, a searched value).
METRIC_DIGITS = 4
_MAX_DIGITS = 17
#: A relative difference this small is floating-point rounding, not a difference to show
#: (24.999999999999993 is shown as 25; 1.0000001 is not shown as 1).
_NOISE = 1e-12


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _digits(x: float, digits: int) -> str:
    return f"{x:.{digits}g}"


def fmt_number(value: Any, digits: int = SIGNIFICANT) -> str:
    """``value`` with ``digits`` significant digits, more when needed (see the module doc).

    ``None`` (and anything that is not a number) is ``-``; integers are shown in full.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    x = _as_float(value)
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    for d in range(max(digits, 1), _MAX_DIGITS + 1):
        text = _digits(x, d)
        shown = float(text)
        if not shown.is_integer() or abs(shown - x) <= _NOISE * abs(x):
            return text
    return _digits(x, _MAX_DIGITS)


def fmt_pair(a: Any, b: Any, digits: int = SIGNIFICANT) -> tuple[str, str]:
    """``a`` and ``b`` formatted with the same digits, enough that unequal values differ."""
    x, y = _as_float(a), _as_float(b)
    if x is None or y is None or x == y or not (math.isfinite(x) and math.isfinite(y)):
        return fmt_number(a, digits), fmt_number(b, digits)
    for d in range(max(digits, 1), _MAX_DIGITS + 1):
        left, right = fmt_number(x, d), fmt_number(y, d)
        if left != right:
            # A side whose usual form is exact keeps it (0.3, not 0.29999999999999999).
            exact = [fmt_number(v, digits) if float(fmt_number(v, digits)) == v else text
                     for v, text in ((x, left), (y, right))]
            return (exact[0], exact[1]) if exact[0] != exact[1] else (left, right)
    return repr(x), repr(y)


def fmt_signed(value: Any, digits: int = SIGNIFICANT) -> str:
    """:func:`fmt_number` with an explicit ``+`` on positive values."""
    text = fmt_number(value, digits)
    x = _as_float(value)
    return "+" + text if x is not None and x > 0 and not text.startswith("+") else text


def fmt_percent(value: Any, digits: int = 4) -> str:
    """A signed percent change: ``+25%``, ``-0.0312%``; a nonzero change never shows as 0."""
    if _as_float(value) is None:
        return "-"
    return fmt_signed(value, digits) + "%"


def fmt_fraction(value: Any, decimals: int = 1) -> str:
    """A fraction as a percentage with fixed ``decimals``: ``0.9345`` -> ``93.45%`` (2);
    ``-`` for none or a value that is not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100.0 * float(value):.{decimals}f}%"


def fmt_metric(value: Any, digits: int = METRIC_DIGITS) -> str:
    """A metric of a training or tuning log: a float with ``digits`` significant digits
    (:func:`fmt_number`), ``-`` for none or a float that is not finite, anything else as is
    (an epoch count, a loss name)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return fmt_number(value, digits) if math.isfinite(value) else "-"
    return str(value)


def fmt_coefficient(value: float | None) -> str:
    """A correlation coefficient in [-1, 1]: sign and two decimals (``+0.83``); ``-`` for
    none."""
    return "-" if value is None else f"{value:+.2f}"
