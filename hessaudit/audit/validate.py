"""Option validation in one place: every flag value is checked before any file is read or any
Hessian work starts, and every number is checked before it reaches a JSON document.

* :func:`validate_request` checks an :class:`~hessaudit.audit.run.AuditRequest` (``measure``,
  ``finetune --audit`` and ``tune``'s bound objective all build one); ``AuditRequest``
  calls it from ``__post_init__``, so an invalid request cannot exist.
* :func:`data_config_flags` checks and normalizes the data-config flags (``--input-size``,
  ``--mean``, ``--std``, ``--interpolation``, ``--crop-pct``) for ``measure``, ``finetune`` and
  ``tune`` alike (:class:`~hessaudit.robust.config.FinetuneConfig` calls it too).
* :func:`check_layer_gates` refuses a per-layer gate pattern (``--max-layer-hcal``,
  ``--max-layer-share``) that matches no measured layer, once the layers are known and before
  they are measured.
* :func:`first_nonfinite` / :func:`check_finite_document` find a NaN or Inf anywhere in a
  JSON-ready document, so that no document is written with one.

Limits (a value outside is an error naming the flag):

* ``--epsilon``: finite, >= 0.    ``--loss-bound``: finite, > 0.    ``--n-train``: >= 1.
* ``--tol``: finite, in [0, 1) (a relative tolerance of 100% or more stops at once).
* ``--lanczos-steps``: 1 .. :data:`MAX_LANCZOS_STEPS` (the per-example Lanczos keeps
  steps + 2 vectors of the layer's size per example).
* ``--samples``, ``--batch-size``, ``--spectrum-samples``, ``--trace-probes``: >= 1.
* ``--input-size``: 1 .. :data:`MAX_INPUT_SIZE` pixels per side.
* ``--seed``: 0 .. 2**63 - 1 (torch's generators take a 64-bit seed).
* ``--mean``: finite numbers.  ``--std``: finite numbers > 0.  ``--crop-pct``: in (0, 1].
  ``--interpolation``: one of :data:`INTERPOLATIONS`.

This module imports neither torch nor timm.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hessaudit._limits import MAX_LANCZOS_STEPS, check_measure_flags
from hessaudit.audit.loss_bound import parse_loss_bound
from hessaudit.errors import HessauditError

if TYPE_CHECKING:
    from hessaudit.audit.gates import Gate
    from hessaudit.audit.run import AuditRequest

__all__ = [
    "INTERPOLATIONS",
    "MAX_INPUT_SIZE",
    "MAX_LANCZOS_STEPS",
    "check_finite_document",
    "check_layer_gates",
    "data_config_flags",
    "first_nonfinite",
    "parse_floats",
    "validate_request",
]

#: Resize filters: the ones torchvision applies to image tensors (timm's names).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
#: Largest ``--input-size`` accepted (pixels per side); far above any classifier's input.
MAX_INPUT_SIZE = 4096
_SHOW = 8


# --------------------------------------------------------------------------- scalars


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(
    flag: str, value: Any, *, low: int = 1, high: int | None = None, optional: bool = False
) -> None:
    """``value`` is an integer in [low, high] (None allowed when ``optional``)."""
    if value is None and optional:
        return
    if not _is_int(value) or value < low or (high is not None and value > high):
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
    ok = _is_real(value) and math.isfinite(value)
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
        shown = f"{value:g}" if _is_real(value) else repr(value)
        raise HessauditError(f"{flag} {shown}: must be {what}")


# --------------------------------------------------------------------------- data config


def parse_floats(values: Any, flag: str) -> tuple[float, ...] | None:
    """``--mean`` / ``--std`` values as a tuple of floats, or None when not given.

    Accepts a number, a sequence of numbers, or strings holding numbers separated by commas
    or spaces (the flag is repeatable: ``--mean 0.5``, ``--mean 0.485,0.456,0.406`` and
    ``--mean 0.485 --mean 0.456 --mean 0.406`` are the same kind of thing).
    """
    if values is None:
        return None
    if isinstance(values, (str, int, float)):
        values = [values]
    try:
        given = list(values)
    except TypeError:
        raise HessauditError(f"{flag} {values!r}: expected numbers") from None
    if not given:  # a repeatable flag that was not given
        return None
    items: list[Any] = []
    for value in given:
        items.extend(re.split(r"[\s,]+", value.strip()) if isinstance(value, str) else [value])
    items = [item for item in items if item != ""]
    if not items:
        raise HessauditError(f"{flag}: expected at least one number")
    out = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise HessauditError(
                f"{flag} {item!r}: not a number", hint=f"e.g. {flag} 0.485,0.456,0.406"
            ) from None
        if isinstance(item, bool) or not math.isfinite(number):
            raise HessauditError(f"{flag} {item!r}: must be a finite number")
        out.append(number)
    return tuple(out)


def data_config_flags(
    *,
    input_size: Any = None,
    mean: Any = None,
    std: Any = None,
    interpolation: Any = None,
    crop_pct: Any = None,
) -> dict[str, Any]:
    """Check the data-config flags and return them normalized (floats as tuples)."""
    if input_size is not None:
        sizes = input_size if isinstance(input_size, (tuple, list)) else (input_size,)
        if len(sizes) not in (1, 2):
            raise HessauditError(
                f"--input-size {input_size!r}: must be a positive integer or (height, width)"
            )
        for size in sizes:
            check_int("--input-size", size, low=1, high=MAX_INPUT_SIZE)
    means = parse_floats(mean, "--mean")
    stds = parse_floats(std, "--std")
    if stds is not None and any(s <= 0 for s in stds):
        raise HessauditError(f"--std {','.join(f'{s:g}' for s in stds)}: every value must be > 0")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise HessauditError(
            f"--interpolation {interpolation!r}: must be one of {', '.join(INTERPOLATIONS)}"
        )
    check_real("--crop-pct", crop_pct, low=0, high=1, low_open=True, optional=True)
    return {
        "input_size": input_size,
        "mean": means,
        "std": stds,
        "interpolation": interpolation,
        "crop_pct": None if crop_pct is None else float(crop_pct),
    }


# --------------------------------------------------------------------------- the request


def validate_request(request: AuditRequest) -> None:
    """Check every option of an audit request; raise :class:`HessauditError` naming the flag.

    Runs before any file is read (``AuditRequest.__post_init__``).
    """
    for flag, value in (("--model", request.model), ("--data", request.data)):
        if not isinstance(value, str) or not value.strip():
            raise HessauditError(f"{flag} is empty")
    check_real("--epsilon", request.epsilon, low=0)
    parse_loss_bound(request.loss_bound)  # max | quantile:Q | a positive number
    check_real("--tol", request.tol, low=0, high=1, high_open=True)
    check_int("--lanczos-steps", request.lanczos_steps, low=1)
    check_int("--samples", request.samples, optional=True)
    check_int("--batch-size", request.batch_size)
    check_int("--spectrum-samples", request.spectrum_samples)
    check_int("--trace-probes", request.trace_probes)
    check_int("--n-train", request.n_train, optional=True)
    check_int("--num-classes", request.num_classes, optional=True)
    # 64-bit seeds and the upper bounds of --lanczos-steps, --trace-probes, --spectrum-samples.
    check_measure_flags(
        seed=request.seed,
        lanczos_steps=request.lanczos_steps,
        trace_probes=request.trace_probes,
        spectrum_samples=request.spectrum_samples,
    )
    if request.dtype not in ("float32", "float64"):
        raise HessauditError(f"--dtype {request.dtype!r}: must be float32 or float64")
    data_config_flags(
        input_size=request.input_size,
        mean=request.mean,
        std=request.std,
        interpolation=request.interpolation,
        crop_pct=request.crop_pct,
    )
    request.settings()  # --reduce, --form, --engine (MeasureSettings checks them)


# --------------------------------------------------------------------------- layer gates


def check_layer_gates(gates: Iterable[Gate], layer_names: Sequence[str]) -> None:
    """Refuse a per-layer gate whose pattern matches none of ``layer_names`` (the layers the
    audit is about to measure), naming the flag or file it came from and a few layer names."""
    from hessaudit.audit.gates import LAYER_KEYS, matching

    names = list(layer_names)
    for gate in gates:
        if gate.key not in LAYER_KEYS or gate.pattern is None:
            continue
        if matching(names, gate.pattern):
            continue
        where = f"--{gate.key}"
        if not gate.source.startswith("--"):
            where += f" (from {gate.source})"
        shown = ", ".join(names[:_SHOW])
        if len(names) > _SHOW:
            shown += f", ... ({len(names)} in all)"
        raise HessauditError(
            f"{where} {gate.pattern}={gate.threshold:g}: the pattern {gate.pattern!r} matches "
            "no layer that the audit measures",
            hint=f"measured layers: {shown}" if names else "the audit measures no layer",
        )


# --------------------------------------------------------------------------- documents


def first_nonfinite(document: Any, path: str = "") -> tuple[str, float] | None:
    """The JSON path and value of the first NaN or Inf in ``document``, or None."""
    if isinstance(document, float):
        return None if math.isfinite(document) else (path or "(the document)", document)
    if isinstance(document, Mapping):
        for key, value in document.items():
            found = first_nonfinite(value, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(document, (list, tuple)):
        for index, value in enumerate(document):
            found = first_nonfinite(value, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def check_finite_document(document: Any, *, what: str) -> None:
    """Refuse to emit ``document`` when it holds a NaN or Inf; name where it is."""
    found = first_nonfinite(document)
    if found is None:
        return
    path, value = found
    layer = _layer_name(document, path)
    raise HessauditError(
        f"{what}: {path}{f' (layer {layer})' if layer else ''} is {value}, not a finite "
        "number; nothing was written",
        hint="the model overflows on this data: check the inputs' scale, or try --dtype float64",
    )


def _layer_name(document: Any, path: str) -> str | None:
    match = re.match(r"layers\[(\d+)\]", path)
    if not match or not isinstance(document, Mapping):
        return None
    try:
        return str(document["layers"][int(match.group(1))]["name"])
    except (KeyError, IndexError, TypeError):
        return None
