"""What the losses of :mod:`hessaudit.robust.losses`, :mod:`hessaudit.robust.js_loss` and
:mod:`hessaudit.robust.nonneg` share: the batch reduction, ``F`` as a tensor, and ``F^-1``.

Below all three, so that :func:`hessaudit.robust.losses.make_loss` can dispatch to the other
two without an import cycle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["as_matrix", "noise_inverse", "reduce_values"]


def reduce_values(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-example ``values`` reduced as ``reduction`` says: ``mean``, ``sum`` or ``none``."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"unknown reduction {reduction!r}")


def as_matrix(F: Any, like: torch.Tensor) -> torch.Tensor:
    """``F`` (array or tensor) as a tensor of ``like``'s dtype and device."""
    return torch.as_tensor(np.asarray(F) if not torch.is_tensor(F) else F).to(
        dtype=like.dtype, device=like.device
    )


def noise_inverse(noise_matrix: Any) -> torch.Tensor:
    """``F^-1`` computed in float64 on the CPU (the backward-corrected losses' weights)."""
    if torch.is_tensor(noise_matrix):
        F64 = noise_matrix.detach().to("cpu", torch.float64)
    else:
        F64 = torch.as_tensor(np.asarray(noise_matrix, dtype=np.float64))
    return torch.linalg.inv(F64)
