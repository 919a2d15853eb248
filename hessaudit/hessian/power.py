"""Power iteration for the dominant eigenvalue of one symmetric operator (PyHessian-style).

Power iteration converges to an eigenvector of the eigenvalue of largest *magnitude*. For a
positive semidefinite block that is the top eigenvalue; for an indefinite block whose most
negative eigenvalue is larger in magnitude than the most positive one it is that negative
eigenvalue, and when the two magnitudes tie it does not converge (the residual stays large and
``converged`` is False). We return the Rayleigh quotient theta = q^T H q, so the value carries
its sign. Prefer :func:`~hessaudit.hessian.lanczos.lanczos_top_eigenvalue`, which finds the
largest algebraic eigenvalue in fewer products; power iteration is here for comparison with
published numbers.

Stopping rule (both conditions, unlike PyHessian's change-only test, which stops early on slow
plateaus): after iteration t with unit vector q_t, w = H q_t, theta_t = q_t^T w,

    |theta_t - theta_{t-1}| <= tol * |theta_t|,
    ||w - theta_t q_t||     <= residual_tol * |theta_t|,

``residual_tol`` defaulting to sqrt(tol) (for a symmetric operator the Rayleigh quotient error is
of the order of the squared residual). A zero operator stops at once with value 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from hessaudit.errors import HessauditError
from hessaudit.hessian._util import check_generator, random_normal
from hessaudit.hessian.lanczos import EigenResult

DEFAULT_POWER_ITERS = 100
DEFAULT_POWER_TOL = 1e-3


def power_iteration(
    matvec: Callable[[Tensor], Tensor],
    size: int,
    *,
    generator: torch.Generator,
    max_iters: int = DEFAULT_POWER_ITERS,
    tol: float = DEFAULT_POWER_TOL,
    residual_tol: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> EigenResult:
    """Dominant (largest-magnitude) eigenvalue of ``matvec`` by power iteration.

    ``matvec`` maps a 1-D ``(size,)`` vector to H times it. Start vector: Gaussian from
    ``generator``. One product per iteration; ``matvecs == steps``.
    """
    check_generator(generator)
    if size < 1 or max_iters < 1:
        raise HessauditError("power iteration needs size >= 1 and max_iters >= 1")
    rtol = math.sqrt(tol) if residual_tol is None else residual_tol
    q = random_normal(size, generator=generator, dtype=dtype, device=device)
    q = q / q.norm()
    tiny = torch.finfo(torch.float64).tiny
    theta_prev = math.nan
    theta, residual, change, converged, it = 0.0, math.inf, math.nan, False, 0
    for it in range(1, max_iters + 1):
        w = matvec(q).to(q.dtype)
        theta = float((q * w).sum())
        w_norm = float(w.norm())
        if w_norm == 0.0:  # H q = 0: a zero operator (or q in its null space)
            theta, residual, change, converged = 0.0, 0.0, 0.0, True
            break
        residual = float((w - theta * q).norm()) / max(abs(theta), tiny)
        if it > 1:
            change = abs(theta - theta_prev) / max(abs(theta), tiny)
            if change <= tol and residual <= rtol:
                converged = True
                break
        theta_prev = theta
        q = w / w_norm
    return EigenResult(
        value=theta, steps=it, residual=residual, converged=converged, matvecs=it,
        method="power", last_change=change,
    )
