"""The data-config flags, checked and normalized: ``--input-size``, ``--mean``, ``--std``,
``--interpolation``, ``--crop-pct`` (``measure``, ``finetune`` and ``tune`` alike).

Limits (a value outside is an error naming the flag):

* ``--input-size``: 1 .. :data:`MAX_INPUT_SIZE` pixels per side, one value or (height, width).
* ``--mean``: finite numbers.  ``--std``: finite numbers > 0.  ``--crop-pct``: in (0, 1].
* ``--interpolation``: one of :data:`INTERPOLATIONS`.

:func:`hessaudit.inputs.data_config.input_config` calls :func:`data_config_flags`, and so does
:class:`~hessaudit.robust.config.FinetuneConfig`. This module imports neither torch nor timm.
"""

from __future__ import annotations

import math
import re
from typing import Any

from hessaudit._checks import check_int, check_real
from hessaudit.errors import HessauditError

__all__ = ["INTERPOLATIONS", "MAX_INPUT_SIZE", "data_config_flags", "parse_floats"]

#: Resize filters: the ones torchvision applies to image tensors (timm's names).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
#: Largest ``--input-size`` accepted (pixels per side); far above any classifier's input.
MAX_INPUT_SIZE = 4096


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
