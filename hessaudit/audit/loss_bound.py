"""The loss bound C of Theorem 2.1: ``--loss-bound max | quantile:Q | VALUE``.

Theorem 2.1 needs a bound C on the per-example loss. Cross-entropy is unbounded, so hessaudit
offers three choices, recorded in the audit JSON's ``C_source``:

* ``max`` (the default): C = the largest per-example training loss over all of ``--data``, an
  empirical plug-in, ``C_source = "empirical_max"``. One badly fitted example can set it.
* ``quantile:Q`` with 0 < Q < 1: C = the Q-quantile of the per-example training losses over
  all of ``--data`` (linear interpolation between order statistics, numpy's default: with the
  N losses sorted as l_(0) <= ... <= l_(N-1), h = Q * (N - 1) and
  C = l_(floor h) + (h - floor h) * (l_(floor h + 1) - l_(floor h))),
  ``C_source = "empirical_quantile:Q"``. A fraction of about 1 - Q of the examples have a
  larger loss, so C is **not** a bound on the loss of every example, and the audit is labelled
  an estimate (:func:`hessaudit.audit.bound.classify_bound`).
* ``VALUE``, a positive finite number: C = VALUE, ``C_source = "user"`` (as before: a plain
  number keeps working exactly as it always did).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hessaudit.errors import HessauditError

EMPIRICAL_MAX = "empirical_max"
USER = "user"
QUANTILE_PREFIX = "empirical_quantile:"
_FLAG = "--loss-bound"
_HINT = "use max, quantile:Q with 0 < Q < 1 (e.g. quantile:0.99), or a positive number"


@dataclass(frozen=True)
class LossBoundChoice:
    """A parsed ``--loss-bound``: ``kind`` is "max", "quantile" or "user"."""

    kind: str
    value: float | None = None  # Q for "quantile", C for "user"

    @property
    def source(self) -> str:
        """The ``C_source`` this choice records."""
        if self.kind == "max":
            return EMPIRICAL_MAX
        if self.kind == "quantile":
            return f"{QUANTILE_PREFIX}{self.value:g}"
        return USER


def parse_loss_bound(spec: str | float | int | None) -> LossBoundChoice:
    """Parse ``--loss-bound`` (None: the default ``max``). Raises a one-line HessauditError."""
    if spec is None:
        return LossBoundChoice("max")
    if isinstance(spec, bool):
        raise HessauditError(f"{_FLAG} must be max, quantile:Q or a number, not {spec!r}")
    if isinstance(spec, int | float):
        return LossBoundChoice("user", _positive(float(spec), repr(spec)))
    text = str(spec).strip()
    lowered = text.lower()
    if lowered == "max":
        return LossBoundChoice("max")
    if lowered.startswith("quantile:"):
        raw = text.partition(":")[2].strip()
        q = _float(raw)
        if q is None or not (0 < q < 1):
            raise HessauditError(
                f"{_FLAG} quantile:Q needs 0 < Q < 1, not {raw[:40]!r}",
                hint="quantile:0.99, for example; 'max' is the largest loss",
            )
        return LossBoundChoice("quantile", q)
    number = _float(text)
    if number is None:
        raise HessauditError(f"{_FLAG} {text[:40]!r} is not understood", hint=_HINT)
    return LossBoundChoice("user", _positive(number, text[:40]))


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _positive(number: float, shown: str) -> float:
    if not (math.isfinite(number) and number > 0):
        raise HessauditError(f"{_FLAG} must be a positive finite number (got {shown})")
    return number


def resolve_loss_bound(choice: LossBoundChoice, losses: Any) -> tuple[float, str]:
    """(C, C_source) for ``choice`` from the per-example training losses (a torch tensor)."""
    import torch

    if choice.kind == "user":
        assert choice.value is not None
        return float(choice.value), USER
    flat = losses.detach().double().flatten()
    if choice.kind == "max":
        return float(flat.max()), EMPIRICAL_MAX
    assert choice.value is not None
    ordered = torch.sort(flat).values
    h = choice.value * (len(ordered) - 1)
    low = math.floor(h)
    high = min(low + 1, len(ordered) - 1)
    value = ordered[low] + (h - low) * (ordered[high] - ordered[low])
    return float(value), choice.source


def quantile_of(source: Any) -> float | None:
    """Q of an ``"empirical_quantile:Q"`` source (read from a file: anything else gives None)."""
    if not isinstance(source, str) or not source.startswith(QUANTILE_PREFIX):
        return None
    q = _float(source[len(QUANTILE_PREFIX) :][:40])
    return q if q is not None and 0 < q < 1 else None


def c_source_label(source: Any) -> str:
    """A short description of ``C_source`` made of fixed words and a number only, so it is safe
    to show wherever the document came from."""
    if source == EMPIRICAL_MAX:
        return "empirical max per-example loss"
    if source == USER:
        return "user"
    q = quantile_of(source)
    if q is not None:
        return f"empirical {q:g} quantile of the per-example loss (not a bound)"
    return "unknown"
