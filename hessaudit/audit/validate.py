"""The checks every option and every document goes through, in one place.

* :func:`check_int` / :func:`check_real`: one integer or finite number within bounds, with one
  message shape for every flag (``--tol 2: must be a finite number >= 0 and < 1``). The audit
  request (:mod:`hessaudit.audit.request`), the measure settings
  (:mod:`hessaudit.audit.settings`) and the bound (:mod:`hessaudit.audit.bound`) use them.
* :func:`data_config_flags` checks and normalizes the data-config flags (``--input-size``,
  ``--mean``, ``--std``, ``--interpolation``, ``--crop-pct``) for ``measure``, ``finetune`` and
  ``tune`` alike (:class:`~hessaudit.robust.config.FinetuneConfig` calls it too).
* :func:`first_nonfinite` / :func:`check_finite_document` find a NaN or Inf anywhere in a
  JSON-ready document, so that no document is written with one.

Limits of the data-config flags (a value outside is an error naming the flag):

* ``--input-size``: 1 .. :data:`MAX_INPUT_SIZE` pixels per side.
* ``--mean``: finite numbers.  ``--std``: finite numbers > 0.  ``--crop-pct``: in (0, 1].
  ``--interpolation``: one of :data:`INTERPOLATIONS`.

This module imports nothing of hessaudit but its errors (it sits below every module that
validates), and neither torch nor timm.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from hessaudit.errors import HessauditError

__all__ = [
    "INTERPOLATIONS",
    "MAX_INPUT_SIZE",
    "check_finite_document",
    "check_int",
    "check_real",
    "data_config_flags",
    "first_nonfinite",
    "parse_floats",
]

#: Resize filters: the ones torchvision applies to image tensors (timm's names).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
#: Largest ``--input-size`` accepted (pixels per side); far above any classifier's input.
MAX_INPUT_SIZE = 4096


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
