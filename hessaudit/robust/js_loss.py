"""The Jensen-Shannon divergence loss (``--loss js``) of Englesson & Azizpour, "Generalized
Jensen-Shannon Divergence Loss for Learning with Noisy Labels" (NeurIPS 2021), as shipped in the
seed's ``model/loss.py`` (``JensenShannonDivergenceWeightedScaled`` with two distributions).

The math
--------
With ``p = softmax(f(x))``, the one-hot label ``e_y`` and the weight ``pi = pi_1`` of the label
(``--js-weight``, in ``(0, 1)``), the mixture is ``m = pi e_y + (1 - pi) p`` and::

    JS_pi(e_y, p) = pi KL(e_y || m) + (1 - pi) KL(p || m)
    L_JS(x, y)    = JS_pi(e_y, p) / (-(1 - pi) log(1 - pi)).

Because ``m_j = (1 - pi) p_j`` for every ``j != y``, all terms but the label's collapse, and the
loss depends on ``p_y`` alone. With ``m_y = pi + (1 - pi) p_y`` and ``u = 1 - m_y =
(1 - pi)(1 - p_y)``::

    JS_pi = -m_y log m_y + (1 - pi) p_y log p_y - u log(1 - pi).

That closed form is what is computed, with ``1 - p_y`` summed from the other classes'
probabilities and ``log1p`` so that it stays accurate in float32 as ``p_y -> 1`` (where the
first two terms nearly cancel). Properties (checked in tests/robust/test_js_loss.py):
``0 <= L_JS <= H(pi) / (-(1 - pi) log(1 - pi))`` with ``H`` the binary entropy (reached when
``p_y = 0``); ``L_JS -> CE = -log p_y`` as ``pi -> 0`` and ``L_JS -> 1 - p_y`` (MAE / 2) as
``pi -> 1``, so ``pi`` moves the loss between the two. The seed clamps ``m`` and the label at
``1e-7`` inside the logarithms; the closed form needs no clamp.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf

from hessaudit.errors import HessauditError
from hessaudit.robust.loss_math import reduce_values

__all__ = ["check_js_weight", "jensen_shannon_loss"]


def check_js_weight(pi1: float) -> float:
    """``pi1`` as a float; raise :class:`HessauditError` naming ``--js-weight`` unless it is a
    finite number strictly between 0 and 1 (at 0 or 1 the scale ``-1/((1-pi) log(1-pi))`` is
    undefined)."""
    ok = isinstance(pi1, (int, float)) and not isinstance(pi1, bool)
    if not ok or not math.isfinite(pi1) or not 0.0 < pi1 < 1.0:
        raise HessauditError(f"--js-weight {pi1} must be in (0, 1)", hint="e.g. 0.5")
    return float(pi1)


def jensen_shannon_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, pi1: float = 0.5, reduction: str = "mean"
) -> torch.Tensor:
    """``L_JS`` of the module docstring for each example; mean (default), sum or none."""
    pi = check_js_weight(pi1)
    one_minus_pi = 1.0 - pi
    log_one_minus_pi = math.log1p(-pi)
    scale = -1.0 / (one_minus_pi * log_one_minus_pi)
    log_probs = nnf.log_softmax(logits, dim=1)
    label = labels.view(-1, 1)
    # q = 1 - p_y as the sum of the other classes' probabilities: accurate when p_y is near 1,
    # where 1 - exp(log p_y) would cancel; log p_y from q there (log1p), from log_softmax else.
    q = log_probs.exp().scatter(1, label, 0.0).sum(dim=1)
    log_p = torch.where(
        q < 0.5, torch.log1p(-q.clamp(max=0.5)), log_probs.gather(1, label).squeeze(1)
    )
    p = torch.where(q < 0.5, 1.0 - q, log_p.exp())
    u = one_minus_pi * q  # (1 - pi)(1 - p_y)
    js = -(1.0 - u) * torch.log1p(-u) + one_minus_pi * p * log_p - u * log_one_minus_pi
    return reduce_values(scale * js, reduction)
