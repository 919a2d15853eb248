"""Theorem 2.1 of Ju, Li & Zhang (ICML 2022) evaluated on an audit.

With probability at least 0.99, for any fixed epsilon close to 0,

    L(f) <= (1 + eps) * Lhat(f) + (1 + eps) * sqrt(C) * sum_i sqrt(Hcal_i) / sqrt(n) + xi,

where Lhat is the training loss, C a bound on the loss, n the number of training examples and
xi = O(n^(-3/4)) a Taylor remainder whose constant the paper does not give. hessaudit reports

    G     = sqrt(C) * sum_i sqrt(max(Hcal_i, 0)) / sqrt(n)     (the Hessian term)
    bound = (1 + eps) * Lhat + (1 + eps) * G                   (xi NOT included)

A negative raw or cross-term value of Hcal_i counts as 0 (the layer is reported as clamped).
Cross-entropy is unbounded, so by default C is the largest per-example loss seen on the data, an
empirical plug-in labelled ``"empirical_max"``; a user-given bound is labelled ``"user"``.
The ratio G / gap is reported only when the observed gap is positive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from hessaudit.errors import HessauditError

REMAINDER_NOTE = "the O(n^-3/4) Taylor remainder xi of Theorem 2.1 is not included"


@dataclass(frozen=True)
class BoundResult:
    train_loss: float
    eval_loss: float | None
    gap: float | None
    ratio_to_gap: float | None
    n: int
    C: float
    C_source: str
    epsilon: float
    hessian_term: float
    bound: float
    note: str = REMAINDER_NOTE

    def to_dict(self) -> dict:
        return asdict(self)


def hessian_term(hcal: Sequence[float], *, loss_bound: float, n: int) -> float:
    """G = sqrt(C) * sum_i sqrt(max(hcal_i, 0)) / sqrt(n)."""
    if n < 1:
        raise HessauditError("--n-train must be at least 1")
    if loss_bound < 0 or not math.isfinite(loss_bound):
        raise HessauditError("--loss-bound must be a finite non-negative number")
    return math.sqrt(loss_bound) * sum(math.sqrt(max(h, 0.0)) for h in hcal) / math.sqrt(n)


def compute_bound(
    hcal: Sequence[float],
    *,
    train_loss: float,
    n: int,
    loss_bound: float,
    loss_bound_source: str,
    epsilon: float = 0.0,
    eval_loss: float | None = None,
) -> BoundResult:
    """Evaluate the bound of Theorem 2.1 (without its remainder) from per-layer ``hcal``."""
    if epsilon < 0 or not math.isfinite(epsilon):
        raise HessauditError("--epsilon must be a finite non-negative number")
    term = hessian_term(hcal, loss_bound=loss_bound, n=n)
    gap = None if eval_loss is None else eval_loss - train_loss
    # A non-positive gap (held-out loss at or below the training loss) has no meaningful ratio.
    ratio = term / gap if gap is not None and gap > 0 else None
    return BoundResult(
        train_loss=train_loss,
        eval_loss=eval_loss,
        gap=gap,
        ratio_to_gap=ratio,
        n=n,
        C=loss_bound,
        C_source=loss_bound_source,
        epsilon=epsilon,
        hessian_term=term,
        bound=(1 + epsilon) * train_loss + (1 + epsilon) * term,
    )
