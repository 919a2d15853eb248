"""Checks on JSON-ready documents: no NaN or Inf is ever written.

* :func:`first_nonfinite` / :func:`check_finite_document` find a NaN or Inf anywhere in a
  JSON-ready document, so that no document is written with one.

The option checks live below every package that validates: :func:`hessaudit._checks.check_int`
/ :func:`~hessaudit._checks.check_real` (one message shape for every flag) and
:mod:`hessaudit.inputs.data_flags` (the data-config flags shared by measure, finetune and tune).
This module imports nothing of hessaudit but its errors, and neither torch nor timm.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from hessaudit.errors import HessauditError

__all__ = ["check_finite_document", "first_nonfinite"]


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
