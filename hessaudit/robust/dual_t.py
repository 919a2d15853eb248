"""The Dual-T estimate of the noise matrix (Yao et al., "Dual T: Reducing estimation error for
transition matrix in label-noise learning", NeurIPS 2020), as the paper's released code uses it
(``utils/dual_t.py`` of the seed, ``--load_matrix``).

Convention: ``F[y, z] = P(noisy label = z | true label = y)``, rows = true label (the Dual-T
paper's ``T`` has the same orientation).

The math
--------
A first model trained on the noisy labels gives softmax outputs ``s(x)`` and a predicted class
``yhat(x) = argmax_j s_j(x)``: the *intermediate class*. Dual-T factorizes ``F`` through it::

    F[y, z] = sum_l P(yhat = l | y) P(z | yhat = l)        (assumes z independent of y given yhat)
            = (T_club @ T_spade)[y, z]

* ``T_spade[l, z] = #{i : yhat_i = l, z_i = z} / #{i : yhat_i = l}``: row-normalized counts of
  (prediction, noisy label) pairs. Counting needs no estimate of a class posterior, which is
  where the anchor-point estimator's error comes from.
* ``T_club[y, :] = s(x_a(y))``: the anchor-point estimate of ``P(yhat | y)``. The anchor of
  class ``y`` is the example with the largest ``s_y`` strictly below the 97th percentile of
  ``s_y`` over all examples (``numpy.quantile(..., method="higher")``): the top 3% are treated
  as outliers, as in the released code's ``filter_outlier=True``.

When it is right, and when not. The product is exact when (a) the noisy label depends on the true
label only through the prediction and (b) each anchor's softmax row is ``P(yhat | y)``. For a
first model that classifies confidently and mostly correctly (deep nets trained with
cross-entropy and stopped early), ``T_club`` is close to the identity and ``T_spade`` close to
``F``: the estimate is good (the bound: tests/robust/test_dual_t.py). If instead the outputs are
*calibrated noisy posteriors* ``s(x) = P(z | x)``, the anchors already give ``T_club ~ F`` and
the product ``F @ T_spade`` counts the noise twice; the confident-joint estimate
(:func:`~hessaudit.robust.noise_matrix.estimate_noise_matrix`) does not have that failure.
Exact ties at the top of a column (saturated float outputs) push the anchor below the tie, as
in the released code; hessaudit computes the probabilities in float64.

Differences from the released code (deliberate):

* Anchors are picked from the unmodified outputs. The released code zeroes, in place, the
  entries at or above the percentile while looking for class ``i``'s anchor, and those zeros
  stay in the shared array for the following classes (so some ``T_club`` rows no longer sum
  to 1).
* A class the model never predicts gets an identity row in ``T_spade`` (noisy label = the
  prediction) instead of the released code's zero row, which would leave ``F``'s rows summing to
  less than 1. Such classes are listed in :attr:`DualTEstimate.unpredicted_classes`.
* The trainer feeds out-of-sample probabilities (two-fold cross-fitting, like the other
  estimators); the released code uses the in-sample predictions of its best checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hessaudit.errors import HessauditError
from hessaudit.robust.predictions import check_predictions

__all__ = ["ANCHOR_QUANTILE", "DualTEstimate", "club_matrix", "dual_t_estimate", "spade_matrix"]

#: The released code's outlier filter: anchors are taken below the 97th percentile.
ANCHOR_QUANTILE = 0.97


@dataclass(frozen=True)
class DualTEstimate:
    """The Dual-T estimate ``F = T_club @ T_spade`` and its two factors."""

    F: np.ndarray
    T_club: np.ndarray
    T_spade: np.ndarray
    anchors: tuple[int, ...]  # index of each class's anchor example
    unpredicted_classes: tuple[int, ...]  # classes no example is predicted as
    quantile: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "T_club": self.T_club.tolist(),
            "T_spade": self.T_spade.tolist(),
            "anchors": list(self.anchors),
            "unpredicted_classes": list(self.unpredicted_classes),
            "anchor_quantile": self.quantile,
        }


def spade_matrix(
    predicted: Any, noisy_labels: Any, num_classes: int
) -> tuple[np.ndarray, list[int]]:
    """``T_spade[l, z]``: the fraction of examples predicted ``l`` whose noisy label is ``z``.

    Returns the matrix and the classes never predicted (their rows are identity rows).
    """
    pred = np.asarray(predicted, dtype=np.int64).reshape(-1)
    z = np.asarray(noisy_labels, dtype=np.int64).reshape(-1)
    counts = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(counts, (pred, z), 1.0)
    totals = counts.sum(axis=1)
    empty = [int(c) for c in np.flatnonzero(totals == 0)]
    T = np.eye(num_classes, dtype=np.float64)
    seen = totals > 0
    T[seen] = counts[seen] / totals[seen, None]
    return T, empty


def club_matrix(probs: Any, quantile: float = ANCHOR_QUANTILE) -> tuple[np.ndarray, list[int]]:
    """``T_club[y, :]``: the softmax row of class ``y``'s anchor (see the module docstring).

    ``quantile = 1`` takes the plain arg-max of each column (no outlier filter). Returns the
    matrix and the anchor indices.
    """
    P = np.asarray(probs, dtype=np.float64)
    if not 0.0 < quantile <= 1.0:
        raise HessauditError(f"Dual-T: anchor quantile {quantile} is outside (0, 1]")
    k = P.shape[1]
    T = np.empty((k, k), dtype=np.float64)
    anchors: list[int] = []
    for y in range(k):
        col = P[:, y]
        idx = int(np.argmax(col))
        if quantile < 1.0:
            threshold = np.quantile(col, quantile, method="higher")
            below = np.where(col < threshold, col, -np.inf)
            if np.isfinite(below).any():  # else every value ties at the top: keep the arg-max
                idx = int(np.argmax(below))
        anchors.append(idx)
        T[y] = P[idx]
    return T, anchors


def dual_t_estimate(
    probs: Any,
    noisy_labels: Any,
    *,
    num_classes: int | None = None,
    quantile: float = ANCHOR_QUANTILE,
) -> DualTEstimate:
    """Estimate ``F`` from a first model's softmax outputs ``probs`` (``(n, k)``) and the noisy
    labels (``(n,)``) by Dual-T: ``F = T_club @ T_spade`` (module docstring).

    The result is row-stochastic but not checked for invertibility: pass ``.F`` through
    :func:`~hessaudit.robust.noise_matrix.validate_noise_matrix` before using it in a loss.
    """
    P, z = check_predictions(probs, noisy_labels, num_classes, who="Dual-T")
    k = P.shape[1]
    T_spade, empty = spade_matrix(P.argmax(axis=1), z, k)
    T_club, anchors = club_matrix(P, quantile)
    F = T_club @ T_spade
    F = F / F.sum(axis=1, keepdims=True)  # exact row sums despite rounding
    return DualTEstimate(
        F=F,
        T_club=T_club,
        T_spade=T_spade,
        anchors=tuple(anchors),
        unpredicted_classes=tuple(empty),
        quantile=float(quantile),
    )
