"""Losses for fine-tuning under label noise.

Every loss takes raw ``logits`` of shape ``(B, k)`` and integer labels of shape ``(B,)`` and
returns the batch mean (``reduction="mean"``) or the per-example values (``reduction="none"``).
``l(f(x), j) = -log softmax(f(x))_j`` is the cross-entropy with class ``j``.

* :func:`backward_corrected_loss` (``reweight``, the paper's Algorithm 1 and Patrini et al.'s
  backward correction): ``lbar(f(x), z) = sum_j (F^-1)[z, j] l(f(x), j)``. Unbiased for the
  clean loss (see its docstring). **It can be negative and is unbounded below**: the rows of
  ``F^-1`` have negative off-diagonal entries, so making a wrong class very unlikely can push the
  loss to minus infinity. That is the method, not a bug; the layerwise projection (and early
  stopping) is what keeps the weights in check.
* :func:`forward_corrected_loss` (``forward``): ``-log (softmax(f(x)) F)_z``, the likelihood of
  the noisy label under the model composed with the noise.
* :func:`generalized_cross_entropy` (``gce``, Zhang & Sabuncu 2018): ``(1 - p_y^q) / q``.
* :func:`symmetric_cross_entropy` (``sce``, Wang et al. 2019): ``alpha CE + beta RCE``.
* :func:`label_smoothing_cross_entropy` (``label-smoothing``).
* :func:`l2sp_penalty` (L2-SP, Li et al. 2018), the penalty alternative to the projection.
* ``js``: the Jensen-Shannon divergence loss (Englesson & Azizpour 2021), in
  :mod:`hessaudit.robust.js_loss`;
* ``reweight`` with ``nonneg_correction``: the backward loss with its per-class partial risks
  clamped at zero, in :mod:`hessaudit.robust.nonneg`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf

from hessaudit.errors import HessauditError
from hessaudit.robust.loss_math import as_matrix, noise_inverse, reduce_values

__all__ = [
    "LOSS_NAMES",
    "LossFunction",
    "backward_corrected_loss",
    "cross_entropy",
    "forward_corrected_loss",
    "generalized_cross_entropy",
    "l2sp_penalty",
    "label_smoothing_cross_entropy",
    "make_loss",
    "symmetric_cross_entropy",
]

LOSS_NAMES = ("reweight", "ce", "label-smoothing", "forward", "gce", "sce", "js")
#: Losses that need a noise matrix F.
NEEDS_NOISE_MATRIX = ("reweight", "forward")


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, reduction: str = "mean"
) -> torch.Tensor:
    """Plain cross-entropy ``-log softmax(f(x))_y``."""
    return reduce_values(nnf.cross_entropy(logits, labels, reduction="none"), reduction)


def backward_corrected_loss(
    logits: torch.Tensor,
    noisy_labels: torch.Tensor,
    noise_matrix: Any,
    *,
    inverse: Any = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The backward-corrected ("reweighted") cross-entropy of Ju, Li & Zhang's Algorithm 1.

    ``lbar(f(x), z) = sum_j (F^-1)[z, j] * l(f(x), j)`` with ``l`` the cross-entropy.

    Unbiasedness: if the noisy label ``z`` is drawn from row ``y`` of ``F``, then
    ``E_z[lbar(f(x), z)] = sum_z F[y, z] sum_j (F^-1)[z, j] l(f(x), j)
    = sum_j (F F^-1)[y, j] l(f(x), j) = l(f(x), y)``, because ``F F^-1 = I``. Hence the
    corrected training loss on noisy labels is an unbiased estimate of the clean loss.

    The loss is negative whenever off-diagonal ``F^-1`` weights dominate, and unbounded below
    (``l(f(x), j) -> inf`` for a class ``j`` with negative weight). This is inherent to the
    method.

    ``inverse`` may pass a precomputed ``F^-1`` (``make_loss`` does, computed once in float64).
    """
    Finv = as_matrix(noise_inverse(noise_matrix) if inverse is None else inverse, logits)
    per_class = -nnf.log_softmax(logits, dim=1)  # (B, k): l(f(x), j)
    weights = Finv[noisy_labels]  # (B, k): row z of F^-1
    return reduce_values((weights * per_class).sum(dim=1), reduction)


def forward_corrected_loss(
    logits: torch.Tensor,
    noisy_labels: torch.Tensor,
    noise_matrix: Any,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """Forward correction (Patrini et al., CVPR 2017): ``-log (softmax(f(x)) @ F)[z]``.

    ``(p F)[z] = sum_y p(y | x) F[y, z]`` is the model's probability of the *noisy* label ``z``.
    Computed in log space: ``log (p F)[z] = logsumexp_y (log p_y + log F[y, z])``.
    """
    F = as_matrix(noise_matrix, logits)
    log_p = nnf.log_softmax(logits, dim=1)  # (B, k)
    with torch.no_grad():
        log_F = torch.log(F)  # -inf where F is 0
    log_noisy = torch.logsumexp(log_p.unsqueeze(2) + log_F.unsqueeze(0), dim=1)  # (B, k)
    return reduce_values(-log_noisy.gather(1, noisy_labels.view(-1, 1)).squeeze(1), reduction)


def generalized_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, q: float = 0.7, reduction: str = "mean"
) -> torch.Tensor:
    """Generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018): ``(1 - p_y^q) / q``.

    ``q -> 0`` recovers cross-entropy, ``q = 1`` the mean absolute error (up to a factor 2).
    """
    if not 0.0 < q <= 1.0:
        raise HessauditError(f"--gce-q {q} is outside (0, 1]")
    p_y = nnf.softmax(logits, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    return reduce_values((1.0 - p_y.clamp_min(1e-12) ** q) / q, reduction)


def symmetric_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 0.1,
    beta: float = 1.0,
    label_floor: float = 1e-4,
    prob_floor: float = 1e-7,
    reduction: str = "mean",
) -> torch.Tensor:
    """Symmetric cross-entropy (Wang et al., ICCV 2019): ``alpha * CE + beta * RCE``.

    The reverse cross-entropy swaps prediction and label: ``RCE = -sum_j p_j log q_j`` with
    ``q`` the one-hot label clamped to ``[label_floor, 1]`` (so ``log 0`` becomes
    ``log 1e-4 = -9.21``) and ``p`` the softmax clamped to ``[prob_floor, 1]``, as in the
    authors' code. Hence ``RCE = -log(label_floor) * sum_{j != y} clamp(p_j)``.
    """
    ce = nnf.cross_entropy(logits, labels, reduction="none")
    p = nnf.softmax(logits, dim=1).clamp(min=prob_floor, max=1.0)
    q = nnf.one_hot(labels, logits.shape[1]).to(logits.dtype).clamp(min=label_floor, max=1.0)
    rce = -(p * torch.log(q)).sum(dim=1)
    return reduce_values(alpha * ce + beta * rce, reduction)


def label_smoothing_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, smoothing: float = 0.1, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy against the smoothed target ``(1 - s) onehot(y) + s / k`` (the convention of
    ``torch.nn.CrossEntropyLoss(label_smoothing=s)``):
    ``(1 - s) * (-log p_y) + s * mean_j(-log p_j)``.
    """
    if not 0.0 <= smoothing < 1.0:
        raise HessauditError(f"--smoothing {smoothing} is outside [0, 1)")
    log_p = nnf.log_softmax(logits, dim=1)
    nll = -log_p.gather(1, labels.view(-1, 1)).squeeze(1)
    uniform = -log_p.mean(dim=1)
    return reduce_values((1.0 - smoothing) * nll + smoothing * uniform, reduction)


def l2sp_penalty(
    params: Mapping[str, torch.Tensor],
    anchors: Mapping[str, torch.Tensor],
    *,
    alpha: float,
    beta: float = 0.0,
    new_names: Iterable[str] = (),
) -> torch.Tensor:
    """L2-SP (Li, Grandvalet & Davoine, ICML 2018):
    ``alpha / 2 * sum_{pretrained} ||W - W_pre||_F^2 + beta / 2 * sum_{new} ||W||_F^2``.

    ``anchors`` holds the pretrained value of every tensor pulled towards its start; the tensors
    named in ``new_names`` (the new head) get the plain L2 term with weight ``beta``.
    """
    total: torch.Tensor | None = None
    for name, anchor in anchors.items():
        term = (params[name] - anchor).pow(2).sum() * (alpha / 2.0)
        total = term if total is None else total + term
    if beta:
        for name in new_names:
            term = params[name].pow(2).sum() * (beta / 2.0)
            total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total


@dataclass(frozen=True)
class LossFunction:
    """A configured loss: ``loss(logits, labels) -> scalar``. Build it with :func:`make_loss`."""

    name: str
    options: Mapping[str, float] = field(default_factory=dict)
    noise_matrix: np.ndarray | None = None
    inverse: np.ndarray | None = None
    nonneg: bool = False  # reweight only: clamp the per-class partial risks at zero

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        name = self.name
        if name == "ce":
            return cross_entropy(logits, labels, reduction=reduction)
        if name == "reweight" and self.nonneg:
            from hessaudit.robust.nonneg import nonneg_backward_corrected_loss

            return nonneg_backward_corrected_loss(
                logits, labels, self.noise_matrix, inverse=self.inverse, reduction=reduction
            )
        if name == "reweight":
            return backward_corrected_loss(
                logits, labels, self.noise_matrix, inverse=self.inverse, reduction=reduction
            )
        if name == "forward":
            return forward_corrected_loss(logits, labels, self.noise_matrix, reduction=reduction)
        if name == "gce":
            return generalized_cross_entropy(
                logits, labels, q=self.options["q"], reduction=reduction
            )
        if name == "sce":
            return symmetric_cross_entropy(
                logits,
                labels,
                alpha=self.options["alpha"],
                beta=self.options["beta"],
                reduction=reduction,
            )
        if name == "label-smoothing":
            return label_smoothing_cross_entropy(
                logits, labels, smoothing=self.options["smoothing"], reduction=reduction
            )
        if name == "js":
            from hessaudit.robust.js_loss import jensen_shannon_loss

            return jensen_shannon_loss(
                logits, labels, pi1=self.options["pi1"], reduction=reduction
            )
        raise HessauditError(f"unknown loss {name!r}")  # pragma: no cover - make_loss checks

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "options": dict(self.options),
            "noise_matrix": None if self.noise_matrix is None else self.noise_matrix.tolist(),
            "nonneg_correction": self.nonneg,
        }


def make_loss(
    name: str,
    *,
    noise_matrix: Any = None,
    smoothing: float = 0.1,
    gce_q: float = 0.7,
    sce_alpha: float = 0.1,
    sce_beta: float = 1.0,
    js_weight: float = 0.5,
    nonneg_correction: bool = False,
) -> LossFunction:
    """Build a loss by its CLI name (``reweight``, ``ce``, ``label-smoothing``, ``forward``,
    ``gce``, ``sce``, ``js``). ``reweight`` and ``forward`` need ``noise_matrix`` (a validated
    ``F``); for ``reweight`` its inverse is computed once, in float64. ``nonneg_correction``
    (``reweight`` only) clamps the per-class partial risks at zero.
    """
    from hessaudit.robust.noise_matrix import validate_noise_matrix

    if name not in LOSS_NAMES:
        raise HessauditError(f"--loss: unknown loss {name!r}", hint="use " + ", ".join(LOSS_NAMES))
    options: dict[str, float] = {}
    F = Finv = None
    if name in NEEDS_NOISE_MATRIX:
        if noise_matrix is None:
            raise HessauditError(
                f"--loss {name} needs a noise matrix",
                hint="pass --noise-matrix symmetric:RATE, a file, 'estimate' or 'injected'",
            )
        F = validate_noise_matrix(noise_matrix, source="--noise-matrix")
        if name == "reweight":
            Finv = np.linalg.inv(F)
    elif name == "label-smoothing":
        if not (math.isfinite(smoothing) and 0.0 <= smoothing < 1.0):
            raise HessauditError(f"--smoothing {smoothing} is outside [0, 1)")
        options["smoothing"] = float(smoothing)
    elif name == "gce":
        if not (math.isfinite(gce_q) and 0.0 < gce_q <= 1.0):
            raise HessauditError(f"--gce-q {gce_q} is outside (0, 1]")
        options["q"] = float(gce_q)
    elif name == "sce":
        for flag, value in (("--sce-alpha", sce_alpha), ("--sce-beta", sce_beta)):
            if not (math.isfinite(value) and value >= 0.0):
                raise HessauditError(f"{flag} {value} must be >= 0")
        if sce_alpha == 0 and sce_beta == 0:
            raise HessauditError("--sce-alpha and --sce-beta are both 0; the loss would be 0")
        options["alpha"] = float(sce_alpha)
        options["beta"] = float(sce_beta)
    elif name == "js":
        from hessaudit.robust.js_loss import check_js_weight

        options["pi1"] = check_js_weight(js_weight)
    if nonneg_correction and name != "reweight":
        raise HessauditError(f"--nonneg-correction applies to --loss reweight, not --loss {name}")
    return LossFunction(
        name=name, options=options, noise_matrix=F, inverse=Finv, nonneg=bool(nonneg_correction)
    )
