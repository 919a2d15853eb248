"""How the measure is computed: the reduction, the form, the engine and the iteration limits.

:class:`MeasureSettings` is the part of an audit request that the Hessian work reads
(:func:`hessaudit.audit.measure.measure_layers`). Its defaults are the theorem's definition
(docs/measure.md) and are written here only: :class:`~hessaudit.audit.request.AuditRequest`
takes its measure defaults from this class. Every value is checked when the settings are built,
with the messages of the flags they come from.

This module imports neither torch nor timm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hessaudit._checks import check_int, check_real
from hessaudit.errors import HessauditError

__all__ = ["ENGINES", "FORMS", "REDUCTIONS", "MeasureSettings"]

REDUCTIONS = ("example-max", "batch-max", "mean")
FORMS = ("positive", "raw", "cross")
ENGINES = ("auto", "jvp", "lanczos")


@dataclass(frozen=True)
class MeasureSettings:
    """How the measure is computed. Defaults follow the theorem (see
    :mod:`hessaudit.audit.measure`)."""

    reduce: str = "example-max"
    form: str = "positive"
    engine: str = "auto"
    # 100: see docs/measure.md, "Stopping rule of the positive-part quadrature"
    lanczos_steps: int = 100
    tol: float = 1e-3
    batch_size: int = 32
    spectrum: bool = True
    spectrum_samples: int = 32
    trace_probes: int = 8

    def __post_init__(self) -> None:
        check_measure_settings(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_measure_settings(settings: MeasureSettings) -> None:
    """Raise :class:`HessauditError` naming the flag of the first invalid setting.

    ``--tol`` is a relative tolerance in [0, 1) (100% or more would stop at once); the counts
    are at least 1. The upper limits of the counts are the request's
    (:func:`hessaudit._limits.check_measure_flags`).
    """
    for flag, value, choices in (
        ("--reduce", settings.reduce, REDUCTIONS),
        ("--form", settings.form, FORMS),
        ("--engine", settings.engine, ENGINES),
    ):
        if value not in choices:
            raise HessauditError(f"{flag} must be one of {', '.join(choices)}")
    check_real("--tol", settings.tol, low=0, high=1, high_open=True)
    check_int("--lanczos-steps", settings.lanczos_steps, low=1)
    check_int("--batch-size", settings.batch_size)
    check_int("--spectrum-samples", settings.spectrum_samples)
    check_int("--trace-probes", settings.trace_probes)
