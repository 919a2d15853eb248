"""One gate: a threshold on one quantity, where it came from, and what a valid threshold is.

The gate names (the keys below) are a contract: see :mod:`hessaudit.audit.gates`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hessaudit.errors import HessauditError

__all__ = [
    "COMPARE_KEYS",
    "LAYER_KEYS",
    "MEASURE_KEYS",
    "RATIO_KEYS",
    "SECTIONS",
    "Gate",
    "check_threshold",
]

# Order here is the order gates appear in the output.
MEASURE_KEYS = (
    "max-bound",
    "max-hessian-term",
    "max-ratio",
    "min-ratio",
    "max-layer-hcal",
    "max-layer-share",
)
COMPARE_KEYS = ("max-increase", "max-layer-increase")
LAYER_KEYS = frozenset({"max-layer-hcal", "max-layer-share", "max-layer-increase"})
RATIO_KEYS = frozenset({"max-ratio", "min-ratio"})
SECTIONS = {"gates": MEASURE_KEYS, "compare": COMPARE_KEYS}

@dataclass(frozen=True)
class Gate:
    """One threshold. ``source`` says where it came from: a flag or a config file."""

    key: str
    threshold: float
    pattern: str | None = None
    source: str = "flag"

    @property
    def name(self) -> str:
        # No brackets: rich would read "[pattern]" as markup.
        return self.key if self.pattern is None else f"{self.key}:{self.pattern}"

    @property
    def op(self) -> str:
        return ">=" if self.key.startswith("min-") else "<="

    def holds(self, observed: float) -> bool:
        if not math.isfinite(observed):
            return False
        return observed >= self.threshold if self.op == ">=" else observed <= self.threshold

    def record(self, observed: float | None, passed: bool, **extra: Any) -> dict[str, Any]:
        """The gate's entry in a JSON document (``name``, ``op``, ``threshold``, ...)."""
        if observed is not None and not math.isfinite(observed):
            observed = None
        entry: dict[str, Any] = {
            "name": self.name,
            "op": self.op,
            "threshold": self.threshold,
            "observed": observed,
            "passed": bool(passed),
            "source": self.source,
        }
        if self.pattern is not None:
            entry["pattern"] = self.pattern
        entry.update(extra)
        return entry


def check_threshold(key: str, value: Any, where: str) -> float:
    """Validate one threshold: a finite number, in range for its gate."""
    if isinstance(value, dict):
        raise HessauditError(
            f"{where} must be a number, not a table",
            hint='quote patterns that contain dots: { "layer4.*" = 0.5 }',
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HessauditError(f"{where} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise HessauditError(f"{where} must be a finite number, not {value!r}")
    if key in MEASURE_KEYS and number < 0:
        raise HessauditError(f"{where} must not be negative (got {value!r})")
    if key == "max-layer-share" and number > 1:
        raise HessauditError(
            f"{where} is a fraction of the Hessian term, between 0 and 1 (got {value!r})"
        )
    return number
