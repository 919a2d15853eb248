"""Which engine computes a layer's forms: ``jvp`` (exact Gauss-Newton forms, for piecewise-linear
networks) or ``lanczos`` (any twice-differentiable network); see :mod:`hessaudit.audit.measure`.

``auto`` uses ``jvp`` when every module of the model is piecewise linear *and* the Gauss-Newton
forms agree with the exact second derivative on the first examples of the first batch, to a
relative :data:`_CONFIRM_RTOL`; otherwise ``lanczos``. Both engines assume a deterministic
model: :func:`check_determinism` refuses one whose two forward passes disagree.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hessaudit.audit.layers import Layer, distance_vector
from hessaudit.errors import HessauditError
from hessaudit.hessian import confirm_piecewise_linear, is_piecewise_linear

__all__ = ["check_determinism", "choose_engine_path"]

# Relative agreement required before the Gauss-Newton fast path is trusted.
_CONFIRM_RTOL = 1e-4
# Examples of the first batch on which that agreement is checked, per layer.
_CONFIRM_EXAMPLES = 8


def check_determinism(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse to estimate anything when two forward passes disagree (dropout, train-mode BN)."""
    with torch.no_grad():
        first = nn.functional.cross_entropy(model(x), y)
        second = nn.functional.cross_entropy(model(x), y)
    if not torch.equal(first, second):
        raise HessauditError(
            "the model is not deterministic: two forward passes gave different losses "
            f"({first.item():.6g} vs {second.item():.6g})",
            hint="put the model in eval mode and disable dropout or other randomness",
        )


def choose_engine_path(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layer: Layer,
    requested: str,
    *,
    piecewise: bool | None = None,
    confirm: Callable[..., tuple[bool, float]] | None = None,
) -> str:
    """Return ``"jvp"`` or ``"lanczos"`` for one layer, as described in the module docstring.

    The numerical confirmation uses the first :data:`_CONFIRM_EXAMPLES` examples of ``x``
    (a smooth operation downstream of the layer moves every example's form, so a few suffice).
    ``piecewise`` passes a precomputed :func:`~hessaudit.hessian.is_piecewise_linear`;
    ``confirm`` replaces :func:`~hessaudit.hessian.confirm_piecewise_linear` (without its model
    argument), e.g. by :meth:`~hessaudit.hessian.LayerwiseGaussNewton.confirm`.
    """

    if requested == "lanczos":
        return "lanczos"
    if requested == "jvp":
        return "jvp"
    if piecewise is None:
        piecewise = is_piecewise_linear(model)
    if not piecewise:
        return "lanczos"
    v = distance_vector(model, layer)
    if not bool(torch.any(v != 0)):
        return "jvp"
    xs, ys = x[:_CONFIRM_EXAMPLES], y[:_CONFIRM_EXAMPLES]
    check = confirm or (lambda *a, **k: confirm_piecewise_linear(model, *a, **k))
    agrees, _ = check(xs, ys, layer.name, v, rtol=_CONFIRM_RTOL)
    return "jvp" if agrees else "lanczos"
