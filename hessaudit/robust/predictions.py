"""The checks every estimator of the noise matrix applies to a first model's predictions.

Shared by :func:`hessaudit.robust.noise_matrix.estimate_noise_matrix` and
:func:`hessaudit.robust.dual_t.dual_t_estimate` (which :mod:`~hessaudit.robust.noise_matrix`
dispatches to), so it sits below both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hessaudit.errors import HessauditError

__all__ = ["check_predictions"]


def check_predictions(
    probs: Any, noisy_labels: Any, num_classes: int | None, *, who: str
) -> tuple[np.ndarray, np.ndarray]:
    """A first model's softmax outputs ``(n, k)`` and the noisy labels, as float64 / int64
    arrays, checked for what every estimator of ``F`` needs (``who`` prefixes the messages);
    the outputs come back clipped at 0 and renormalized to rows summing to 1."""
    P = np.asarray(probs, dtype=np.float64)
    z = np.asarray(noisy_labels, dtype=np.int64).reshape(-1)
    if P.ndim != 2:
        raise HessauditError(f"{who}: probs must be a (n, k) array")
    n, k = P.shape
    if num_classes is not None and k != num_classes:
        raise HessauditError(
            f"{who}: probs have {k} columns but the task has {num_classes} classes"
        )
    if z.shape[0] != n:
        raise HessauditError(f"{who}: probs and labels differ in length")
    if n == 0:
        raise HessauditError(f"{who}: no examples")
    if not np.all(np.isfinite(P)):
        raise HessauditError(f"{who}: probs have NaN or infinite entries")
    if z.min() < 0 or z.max() >= k:
        raise HessauditError(f"{who}: a label is outside 0..k-1")
    P = np.clip(P, 0.0, None)
    return P / np.maximum(P.sum(axis=1, keepdims=True), 1e-300), z
