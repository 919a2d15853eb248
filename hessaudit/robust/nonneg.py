"""The non-negative backward correction (``--loss reweight --nonneg-correction``).

The backward-corrected loss (:func:`~hessaudit.robust.losses.backward_corrected_loss`) is
unbiased but unbounded below: a flexible model can drive it to minus infinity by making classes
with negative ``F^-1`` weights very unlikely, and the training loss then goes negative while the
held-out accuracy swings. This module applies the standard remedy of non-negative risk
estimators (Kiryo et al., NeurIPS 2017, for positive-unlabeled learning; the same per-class
``max`` correction as Ishida et al., ICML 2019, for complementary labels).

The math
--------
Split the clean risk by class: ``R = sum_j R_j`` with the *partial risks*
``R_j = E[1{y = j} l(f(x), j)] >= 0`` (``l`` = cross-entropy). Each has an unbiased estimate from
noisy labels: since ``E[(F^-1)[z, j] | y] = sum_z F[y, z] (F^-1)[z, j] = (F F^-1)[y, j] =
1{y = j}``, a batch of ``B`` examples gives::

    Rhat_j = (1/B) sum_i (F^-1)[z_i, j] l(f(x_i), j),        sum_j Rhat_j = backward loss.

``Rhat_j`` can be negative although ``R_j`` cannot; that is where the loss runs off. The
corrected batch loss clamps each partial risk at zero::

    Rtilde = sum_j max(0, Rhat_j).

Properties: ``Rtilde >= 0``; ``|max(0, Rhat_j) - R_j| <= |Rhat_j - R_j|`` for every ``j``
(clamping moves an estimate towards the non-negative truth, never away), so the corrected loss is
never farther from the clean risk than the backward loss, term by term; it is biased upwards
where a ``Rhat_j < 0`` is clamped, and equals the backward loss on every batch where no partial
risk is negative. A clamped class contributes no gradient for that step (the plain ``max``
rule; Kiryo et al.'s optional gradient *ascent* on a negative partial risk is not used).

The clamp acts per mini-batch (per process's slice of the batch under ``torchrun``), so it
depends on the batch size; per-example values do not exist (``reduction="none"`` is refused).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as nnf

from hessaudit.robust.loss_math import as_matrix, noise_inverse

__all__ = ["nonneg_backward_corrected_loss", "partial_risks"]


def partial_risks(
    logits: torch.Tensor, noisy_labels: torch.Tensor, inverse: Any
) -> torch.Tensor:
    """``Rhat_j = (1/B) sum_i (F^-1)[z_i, j] l(f(x_i), j)`` for every class ``j`` (shape ``(k,)``).

    ``inverse`` is ``F^-1`` (array or tensor).
    """
    Finv = as_matrix(inverse, logits)
    per_class = -nnf.log_softmax(logits, dim=1)  # (B, k): l(f(x_i), j)
    return (Finv[noisy_labels] * per_class).mean(dim=0)


def nonneg_backward_corrected_loss(
    logits: torch.Tensor,
    noisy_labels: torch.Tensor,
    noise_matrix: Any,
    *,
    inverse: Any = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """``Rtilde = sum_j max(0, Rhat_j)`` over the batch (module docstring).

    ``reduction="mean"`` is the per-batch rule above; ``"sum"`` multiplies it by the batch size
    (the sum-reduced backward loss clamped the same way). ``inverse`` may pass ``F^-1``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"reduction {reduction!r}: the non-negative correction clamps batch-level partial "
            "risks, so it has no per-example values"
        )
    if inverse is None:
        inverse = noise_inverse(noise_matrix)
    value = partial_risks(logits, noisy_labels, inverse).clamp_min(0.0).sum()
    return value * logits.shape[0] if reduction == "sum" else value
