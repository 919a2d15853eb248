"""Theorem 2.1 of Ju, Li & Zhang (ICML 2022) evaluated on an audit.

With probability at least 0.99, for any fixed epsilon close to 0,

    L(f) <= (1 + eps) * Lhat(f) + (1 + eps) * sqrt(C) * sum_i sqrt(Hcal_i) / sqrt(n) + xi,

where Lhat is the training loss, C a bound on the loss, n the number of training examples and
xi = O(n^(-3/4)) a Taylor remainder whose constant the paper does not give. hessaudit reports

    G     = sqrt(C) * sum_i sqrt(max(Hcal_i, 0)) / sqrt(n)     (the Hessian term)
    bound = (1 + eps) * Lhat + (1 + eps) * G                   (xi NOT included)

A negative raw or cross-term value of Hcal_i counts as 0 (the layer is reported as clamped).
Cross-entropy is unbounded, so by default C is the largest per-example loss seen on the data, an
empirical plug-in labelled ``"empirical_max"``; a user-given bound is labelled ``"user"``;
``--loss-bound quantile:Q`` takes the Q-quantile of the losses, ``"empirical_quantile:Q"``
(:mod:`hessaudit.audit.loss_bound`).
The ratio G / gap is reported only when the observed gap is positive.

Bound or estimate (docs/measure.md, "Bound or estimate"). The theorem's Hcal_i is a maximum over
*all* n training examples of the per-example positive-part form, and C bounds the loss of every
one of them. :func:`classify_bound` labels an audit ``"bound"`` only when it computed exactly
that: Hcal the per-example (``example-max``) maximum of the positive-part form over every example
of the data, C given by the user or the largest loss over every example, n no larger than the
data audited, and every layer's Hcal converged. Anything else is an ``"estimate"``, with one
short reason per condition that failed. A C that is a quantile of the losses
(``"empirical_quantile:Q"``) bounds only a fraction Q of them, so it makes an estimate too.

C dominance: with an empirical C, one badly fitted example can set C. ``C_over_median_loss`` =
C / median per-example training loss says how far C sits above a typical example's loss; above
:data:`C_DOMINANCE_RATIO` the summary says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hessaudit._checks import check_int, check_real
from hessaudit.audit.loss_bound import quantile_of

REMAINDER_NOTE = "the O(n^-3/4) Taylor remainder xi of Theorem 2.1 is not included"
# C / median per-example loss above which the summary notes that C is dominated by the
# worst-fitted examples (G scales with sqrt(C): a ratio of 10 is a factor of about 3 on G).
C_DOMINANCE_RATIO = 10.0
BOUND = "bound"
ESTIMATE = "estimate"
# Longest reason shown from a document (a crafted file could hold anything there).
_REASON_CHARS = 120


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
    median_train_loss: float | None = None
    # C / median per-example training loss; None when the median is 0 or unknown.
    C_over_median_loss: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def hessian_term(hcal: Sequence[float], *, loss_bound: float, n: int) -> float:
    """G = sqrt(C) * sum_i sqrt(max(hcal_i, 0)) / sqrt(n)."""
    check_int("--n-train", n)
    check_real("--loss-bound", loss_bound, low=0)
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
    median_train_loss: float | None = None,
) -> BoundResult:
    """Evaluate the bound of Theorem 2.1 (without its remainder) from per-layer ``hcal``.

    ``median_train_loss`` (the median per-example training loss) only feeds the
    ``C_over_median_loss`` diagnostic.
    """
    check_real("--epsilon", epsilon, low=0)
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
        median_train_loss=median_train_loss,
        C_over_median_loss=(
            loss_bound / median_train_loss
            if median_train_loss is not None and median_train_loss > 0
            else None
        ),
    )


@dataclass(frozen=True)
class BoundKind:
    """Whether an audit evaluated Theorem 2.1's bound or only estimated it, and why."""

    hcal_scope: str  # "all": Hcal reduced over every example of the data; "subset" otherwise
    bound_kind: str  # BOUND or ESTIMATE
    estimate_reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "hcal_scope": self.hcal_scope,
            "bound_kind": self.bound_kind,
            "estimate_reasons": list(self.estimate_reasons),
        }


def classify_bound(
    *,
    data_examples: int,
    hcal_examples: int,
    loss_bound_source: str,
    loss_bound_examples: int,
    reduce: str,
    form: str,
    n: int,
    unconverged_layers: int = 0,
    hcal_from_training_data: bool = True,
) -> BoundKind:
    """Label an audit ``"bound"`` or ``"estimate"`` (see the module docstring).

    ``data_examples``: examples in the audited data set; ``hcal_examples``: how many of them
    the Hcal reduction ran over; ``loss_bound_examples``: how many the empirical C is the max
    over; ``unconverged_layers``: layers whose Hcal came from an iteration that did not
    converge; ``hcal_from_training_data`` is False when Hcal was reduced over held-out examples
    (``--recipe released``), which the theorem does not cover. Each reason is a short phrase built
    from numbers and fixed words only.
    """
    reasons = []
    if not hcal_from_training_data:
        reasons.append("Hcal over held-out examples, not the training data")
    if hcal_examples < data_examples:
        reasons.append(f"max over {hcal_examples} of {data_examples} examples")
    if loss_bound_source != "user" and loss_bound_examples < data_examples:
        reasons.append(f"C is the max loss over {loss_bound_examples} of {data_examples} examples")
    quantile = quantile_of(loss_bound_source)
    if quantile is not None:
        reasons.append(f"C is the {quantile:g} quantile of the loss, not a bound on it")
    if reduce != "example-max":
        reasons.append(f"reduce={reduce}, not the per-example max")
    if form != "positive":
        reasons.append(f"form={form}, not the positive part")
    if n > data_examples:
        reasons.append(f"n={n} but only {data_examples} examples audited")
    if unconverged_layers:
        plural = "s" if unconverged_layers > 1 else ""
        reasons.append(f"Hcal of {unconverged_layers} layer{plural} not converged")
    return BoundKind(
        hcal_scope="all" if hcal_examples >= data_examples else "subset",
        bound_kind=ESTIMATE if reasons else BOUND,
        estimate_reasons=tuple(reasons),
    )


def estimate_label(document: Mapping[str, Any]) -> str | None:
    """``"estimate (max over 10 of 40 examples)"`` for an audit document whose ``bound_kind`` is
    ``"estimate"``, else None (a bound, or an audit written before ``bound_kind`` existed).

    The document may come from a file: the reasons are read defensively and the caller still
    escapes the result for where it is shown.
    """
    if document.get("bound_kind") != ESTIMATE:
        return None
    reasons = document.get("estimate_reasons")
    if not isinstance(reasons, list):
        reasons = []
    text = "; ".join(" ".join(str(reason).split())[:_REASON_CHARS] for reason in reasons[:8])
    return f"{ESTIMATE} ({text})" if text else ESTIMATE
