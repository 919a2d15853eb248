"""Lanczos (Gauss) quadrature for v^T H v and v^T H^+ v, with an error estimate behind
``converged``.

Run m Lanczos steps from q_1 = v / ||v|| (see :mod:`hessaudit.hessian.lanczos`) and let
T_m = S diag(theta) S^T, nodes theta_1 < ... < theta_m, weights w_j = S[0, j]^2. The Gauss rule

    G_m(f) = ||v||^2 sum_j w_j f(theta_j)

matches the spectral measure mu of v (mass ||v||^2 in total, mass ||v||^2 c_i^2 at each
eigenvalue lambda_i of H) on every polynomial of degree <= 2m - 1, and is exact for every f once
the Krylov space is exhausted (breakdown). The raw form (f(t) = t) is exact at every step. The
positive part uses f(t) = max(t, 0) =: t^+; write t^- = max(-t, 0), so
v^T H^+ v = v^T H v + v^T H^- v and the error of G_m(t^+) is the error of G_m(t^-).

The stopping rule. A row stops early, and says ``converged``, only when an error estimate
``err`` of its reported value satisfies ``err <= max(tol * |P_m|, atol)``:

1. *Breakdown*: err = 0 (exact).
2. *Every Ritz value > 0*: then G_m(t^-) = 0 and G_m(t^+) = v^T H v, whatever the negative part
   of H is; the change between steps is 0 and says nothing (that was the old failure: it
   stopped with ``quad_pos == quad_raw`` on smooth networks and claimed convergence). Instead,
   with l_1 the Lagrange polynomial of node theta_1 (l_1(theta_1) = 1, l_1(theta_j) = 0 for
   j >= 2) and gamma = sup_{t <= 0} (-t) / l_1(t)^2, the polynomial p = gamma * l_1^2 has
   degree 2m - 2, is >= 0 everywhere and >= t^- on t <= 0, so
       0 <= v^T H^- v <= integral of p dmu = G_m(p) = ||v||^2 w_1 gamma,
   a rigorous bound (in exact arithmetic): v^T H^+ v lies in [G_m, G_m + ||v||^2 w_1 gamma].
   gamma is the value at the single root of a monotone function (see :func:`_gamma`). Ritz
   values within round-off (100 eps ||H||) of zero count as zero (see :func:`_one_sided_bound`).
3. *Every Ritz value < 0*: the mirror image: G_m = 0 and 0 <= v^T H^+ v <= ||v||^2 w_m gamma'.
4. *Ritz values of both signs*: no bound of that kind is known to us; once a negative Ritz value
   has appeared (the smallest Ritz value only decreases with m, so the phase never returns),
   G_m oscillates around the exact value with a shrinking amplitude. The estimate
   is twice the spread (max - min) of the last ``window`` Gauss values, and is infinite before
   ``window`` steps. Measured on 802 blocks of seven smooth networks (per-example, batch and
   mean Hessians, 20-324 parameters, float64 dense reference; docs/measure.md): with
   ``window=5`` and ``tol=1e-3`` no row stopped with an error above the tolerance; with the
   spread alone one row did (1.0e-3), with a window of 4 values seven, of 3 values 23.

``atol`` lets a caller accept an absolute error: a row of a *maximum* over examples or batches
only needs to be accurate relative to that maximum, not to its own (maybe tiny) value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hessaudit.errors import HessauditError
from hessaudit.hessian.lanczos import MatVec, _Lanczos, _tensor_to_python
from hessaudit.hessian.version import legacy

DEFAULT_QUADRATURE_STEPS = 100
DEFAULT_QUADRATURE_TOL = 1e-3
DEFAULT_QUADRATURE_WINDOW = 5
QUADRATURE_RULES = ("gauss", "averaged")

# Ritz values closer than this (relative to their scale) make the Lagrange bound numerically
# meaningless; such rows get no bound (inf) at that step.
_NODE_GAP_RTOL = 1e-10
_BISECTION_STEPS = 80
# The spread of the last ``window`` Gauss values, times this, is the mixed-sign error estimate.
_SPREAD_SAFETY = 2.0
# Relative safety margin of the screening comparison (float round-off of ||H v||, v^T H v and
# of the caller's lower bound, far below it).
_SCREEN_MARGIN = 1e-3
# Ritz values within this many machine epsilons (of the Lanczos vectors' dtype) times the
# operator scale of zero count as zero (see _one_sided_bound).
_RITZ_NOISE = 100


@dataclass(frozen=True, eq=False)
class QuadratureResult:
    """Gauss-quadrature estimates of v^T H v and v^T H^+ v for each row.

    Attributes (per-row fields are ``(B,)`` tensors, or 0-d for a 1-D start vector):
        raw: v^T H v, exact (||v||^2 alpha_1).
        positive: v^T H^+ v estimate; for the Gauss rule
            ``||v||^2 sum_j S[0,j]^2 max(theta_j, 0)`` with T_m = S diag(theta) S^T.
        steps: most Lanczos steps taken by any row.
        last_change: relative change of ``positive`` between the row's last two steps
            (0 if it took one step).
        error: the error estimate of ``positive`` after the row's last step (absolute; 0 on
            breakdown, ``inf`` when there is none yet); see the module docstring.
        converged: ``error <= max(tol * |positive|, atol)``, or v = 0.
        matvecs: operator applications summed over rows.
        row_steps: Lanczos steps taken by each row.
        breakdown: the row's Krylov space was exhausted, so its estimate is exact.
        rule: ``"gauss"`` or ``"averaged"`` (see :func:`lanczos_quadrature`).
        screened: rows stopped after one step because they provably cannot be the maximum
            (``screen_below`` of :func:`lanczos_quadrature`); their ``positive`` is a lower
            bound, not an estimate.

    Holds tensors, so it compares by identity (``eq=False``).
    """

    raw: Tensor
    positive: Tensor
    steps: int
    last_change: Tensor
    converged: Tensor
    matvecs: int
    row_steps: Tensor
    breakdown: Tensor
    error: Tensor
    rule: str = "gauss"
    screened: Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values: floats for a 1-D start vector, lists for a batch."""
        return {
            "raw": _tensor_to_python(self.raw),
            "positive": _tensor_to_python(self.positive),
            "steps": self.steps,
            "last_change": _tensor_to_python(self.last_change),
            "error": _tensor_to_python(self.error),
            "converged": _tensor_to_python(self.converged),
            "matvecs": self.matvecs,
            "row_steps": _tensor_to_python(self.row_steps),
            "breakdown": _tensor_to_python(self.breakdown),
            "rule": self.rule,
            "screened": None if self.screened is None else _tensor_to_python(self.screened),
        }


def _positive_rule(theta: Tensor, weights: Tensor, v_norm2: Tensor) -> Tensor:
    return v_norm2 * (weights * theta.clamp_min(0)).sum(dim=1)


def _anti_gauss(T: Tensor) -> Tensor:
    """Laurie's anti-Gauss matrix: T with its last off-diagonal entry times sqrt(2)."""
    T = T.clone()
    m = T.shape[-1]
    T[:, m - 1, m - 2] *= math.sqrt(2.0)
    T[:, m - 2, m - 1] *= math.sqrt(2.0)
    return T


def _gamma(theta: Tensor) -> Tensor:
    """gamma = sup_{s >= 0} s / l(-s)^2 for rows of ascending nodes with theta_1 > 0, where
    l(t) = prod_{j >= 2} (t - theta_j) / (theta_1 - theta_j); ``inf`` for a single node.

    log(s / l(-s)^2) = log s - 2 sum_j log(theta_j + s) + const has derivative h(s) / s with
    h(s) = 1 - 2 sum_{j >= 2} s / (theta_j + s), decreasing from 1 to 1 - 2 (m - 1) < 0: one
    maximum, at the root of h, which lies in [theta_2 / (2 (m - 1)), theta_m / (2 m - 3)]
    (bound every term by the smallest / largest theta_j). Bisection on log s finds it.
    """
    R, m = theta.shape
    out = torch.full((R,), math.inf, dtype=theta.dtype, device=theta.device)
    if m < 2 or R == 0:
        return out
    rest = theta[:, 1:]
    gaps = rest - theta[:, :1]
    lo = (theta[:, 1] / (2 * (m - 1))).log()
    hi = (theta[:, -1] / max(2 * m - 3, 1)).log()
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        s = mid.exp()[:, None]
        h = 1 - 2 * (s / (rest + s)).sum(dim=1)
        lo = torch.where(h > 0, mid, lo)
        hi = torch.where(h > 0, hi, mid)
    s = (0.5 * (lo + hi)).exp()
    log_l2 = 2 * ((rest + s[:, None]).log() - gaps.log()).sum(dim=1)
    # the bisection leaves s within a relative 1e-15 of the maximiser, where the function is
    # flat to first order; the factor covers that and the round-off of the sum
    return (s.log() - log_l2).exp() * (1 + 1e-9)


def _one_sided_bound(theta: Tensor, weights: Tensor, v_norm2: Tensor,
                     delta: Tensor) -> Tensor:
    """Bound on |v^T H^+ v - G_m| for rows whose Ritz values all lie above ``-delta`` or all
    below ``delta`` (module docstring, cases 2 and 3); ``inf`` for the other rows.

    ``delta`` (per row) is the round-off level of the Ritz values: a node in [-delta, 0] may be
    a zero eigenvalue (v's null-space part) computed slightly negative, and must not count as
    a negative Ritz value. Shifting H by delta moves every node above 0; since
    t^- <= (t + delta)^- + delta, the shifted bound plus ||v||^2 delta bounds v^T H^- v, and
    G_m(t^-) <= ||v||^2 delta as well, so their maximum bounds the error.
    """
    out = torch.full_like(v_norm2, math.inf)
    d = delta[:, None]
    for rows, nodes, w in (
        (theta[:, 0] > -delta, theta + d, weights[:, 0]),
        # mirror t -> -t: the largest node becomes the smallest
        (theta[:, -1] < delta, (d - theta).flip(1), weights[:, -1]),
    ):
        if not bool(rows.any()):
            continue
        nodes = nodes[rows]
        bound = v_norm2[rows] * (w[rows] * _gamma(nodes) + delta[rows])
        if nodes.shape[1] > 1:
            gap = nodes[:, 1] - nodes[:, 0]
            bound = torch.where(gap > _NODE_GAP_RTOL * nodes.abs().amax(dim=1), bound,
                                math.inf)
        out[rows] = torch.minimum(out[rows], bound)
    return out


def screening_bound(v_norm2: Tensor, hv_norm: Tensor, raw: Tensor) -> Tensor:
    """(||v|| ||H v|| + v^T H v) / 2, an upper bound of v^T H^+ v from one product.

    The quadratic p(t) = (t + c)^2 / (4c), c > 0, satisfies p(t) - t^+ = (t - c)^2 / (4c) >= 0
    for t >= 0 and p(t) >= 0 = t^+ for t <= 0, so v^T H^+ v <= v^T p(H) v
    = (||Hv||^2 + 2c v^T H v + c^2 ||v||^2) / (4c); c = ||Hv|| / ||v|| minimizes it. (The
    maximum of v^T H^+ v over all spectra with these three moments, attained by eigenvalues
    +-c.)"""
    return 0.5 * (v_norm2.sqrt() * hv_norm + raw)


def _screen(lz: _Lanczos, v_norm2: Tensor, below: float) -> Tensor:
    """Rows (after the first step) whose :func:`screening_bound` plus a round-off margin (the
    Ritz noise level, and 1e-3 relative) is below ``below``."""
    hv_norm = lz.v_norm * lz.scale  # ||H v||: after one step, scale = ||H q_1||
    bound = screening_bound(v_norm2, hv_norm, v_norm2 * lz.alphas[:, 0])
    noise = v_norm2 * _RITZ_NOISE * torch.finfo(lz.dtype).eps * lz.scale
    return lz.active & ((bound + noise) * (1 + _SCREEN_MARGIN) < below)


def _check_arguments(tol: float, window: int, rule: str) -> None:
    if not tol >= 0 or window < 2:
        raise HessauditError("tol must be >= 0 and window >= 2")
    if rule not in QUADRATURE_RULES:
        raise HessauditError(f"unknown quadrature rule {rule!r}",
                             hint=f"choose one of {', '.join(QUADRATURE_RULES)}")


def lanczos_quadrature(
    matvec: MatVec,
    v: Tensor,
    *,
    max_steps: int = DEFAULT_QUADRATURE_STEPS,
    tol: float = DEFAULT_QUADRATURE_TOL,
    atol: float | Tensor = 0.0,
    window: int = DEFAULT_QUADRATURE_WINDOW,
    floor: float = 1e-8,
    rule: str = "gauss",
    breakdown_tol: float | None = None,
    screen_below: float = 0.0,
    floor_from_raw: bool = False,
) -> QuadratureResult:
    """v^T H v (exact) and v^T H^+ v (Lanczos quadrature) for each row's operator.

    Each row iterates until its error estimate (module docstring) is at most
    ``max(tol * max(|P_m|, floor * ||v||^2 * scale), atol)`` (``scale`` = largest ||H q_j||
    seen, an estimate of ||H||; the floor treats a positive part below 1e-8 of the natural
    scale as zero), until breakdown (exact), or until ``max_steps`` steps; ``converged`` says
    whether the estimate met the tolerance. ``atol`` is a float or a ``(B,)`` tensor.
    ``tol = 0`` and ``atol = 0`` disable early stopping (run to breakdown or ``max_steps``).

    ``rule="gauss"`` (default) reports the m-step Gauss rule G_m. ``rule="averaged"`` reports
    (G_{m-1} + A_m) / 2 with A_m Laurie's anti-Gauss rule (T_m with its last off-diagonal
    scaled by sqrt(2)); its error estimate is that of G_m plus its distance from G_m. Both rules
    are exact on breakdown (there the Gauss value is reported).

    ``screen_below`` (for a row of a *maximum*): a lower bound ell of the maximum of
    v^T H^+ v over the rows of the reduction this call is part of, e.g. max(max raw form, 0).
    After the first step a row whose certified upper bound (:func:`screening_bound`) is below
    ell cannot be that maximum: it stops, ``screened`` and ``converged``, with error 0 and its
    first Gauss value max(v^T H v, 0) <= ell (so it does not move the maximum either).

    ``floor_from_raw`` (the rows are part of a maximum): after the first step every row's exact
    raw form is known, and v^T H^+ v >= max(v^T H v, 0), so ell' = max(ell, max_r raw_r) is a
    lower bound of the maximum too; it replaces ``screen_below`` and raises ``atol`` to
    ``tol * ell'`` (the tolerance of a maximum: see :mod:`hessaudit.audit._positive_forms`).
    The caller needs no separate pass for the raw forms.

    Rows with ``v = 0`` return 0 and count as converged; a zero operator returns 0. Never NaN
    for finite inputs.
    """
    _check_arguments(tol, window, rule)
    squeeze = v.ndim == 1
    V = v[None] if squeeze else v
    lz = _Lanczos(matvec, V, max_steps=max_steps, breakdown_tol=breakdown_tol)
    B, dev = lz.B, V.device
    f64 = dict(dtype=torch.float64, device=dev)
    atol_rows = torch.as_tensor(atol, **f64).expand(B).clone()
    v_norm2 = lz.v_norm.square()
    positive = torch.zeros(B, **f64)
    history = torch.zeros(B, max_steps, **f64)  # Gauss values G_1 .. G_m per row
    last_change = torch.zeros(B, **f64)
    error = torch.where(lz.active, math.inf, 0.0).to(**f64)
    converged = ~lz.active  # v = 0 rows are done and exact
    screened = torch.zeros(B, dtype=torch.bool, device=dev)
    while lz.steps < max_steps and bool(lz.active.any()):
        running = lz.active.clone()
        lz.step()
        m = lz.steps
        if m == 1 and floor_from_raw:
            screen_below = max(screen_below, float((v_norm2 * lz.rayleigh).max()))
            atol_rows = atol_rows.clamp_min(tol * screen_below)
        rows = running.nonzero().squeeze(1)
        T = lz.tridiagonal(rows, m)
        theta, S = torch.linalg.eigh(T)
        weights = S[:, 0, :].square()
        gauss = _positive_rule(theta, weights, v_norm2[rows])
        history[rows, m - 1] = gauss
        delta = _RITZ_NOISE * torch.finfo(V.dtype).eps * lz.scale[rows]
        err = _one_sided_bound(theta, weights, v_norm2[rows], delta)
        # Ritz values of both signs (beyond round-off): the spread of the last Gauss values
        mixed = (theta[:, 0] <= -delta) & (theta[:, -1] >= delta)
        if m >= window:
            recent = history[rows, m - window : m]
            spread = _SPREAD_SAFETY * (recent.max(dim=1).values - recent.min(dim=1).values)
            err = torch.where(mixed, spread, err)
        broke = lz.breakdown[rows]
        err = torch.where(broke, 0.0, err)
        new = gauss
        if rule == "averaged" and m > 1:
            anti_theta, anti_S = torch.linalg.eigh(_anti_gauss(T))
            anti = _positive_rule(anti_theta, anti_S[:, 0, :].square(), v_norm2[rows])
            averaged = 0.5 * (history[rows, m - 2] + anti)
            new = torch.where(broke, gauss, averaged)
            err = err + (new - gauss).abs()
        if m > 1:
            denom = torch.maximum(new.abs(), floor * v_norm2[rows] * lz.scale[rows])
            last_change[rows] = torch.where(
                denom > 0, (new - positive[rows]).abs() / denom.clamp_min(1e-300), 0.0
            )
        positive[rows] = new
        error[rows] = err
        scale = torch.maximum(new.abs(), floor * v_norm2[rows] * lz.scale[rows])
        if tol > 0 or bool((atol_rows > 0).any()):
            ok = err <= torch.maximum(tol * scale, atol_rows[rows])
        else:  # tol = atol = 0: no early stop, only an exhausted Krylov space is exact
            ok = broke
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        done[rows] = ok
        if m == 1 and screen_below > 0 and not legacy():
            screened = _screen(lz, v_norm2, screen_below) & ~done
            error[screened] = 0.0
            done |= screened
        converged |= done
        lz.stop(done)
    raw = v_norm2 * lz.rayleigh
    fields = dict(
        raw=raw, positive=positive, last_change=last_change, converged=converged,
        row_steps=lz.lengths.clone(), breakdown=lz.breakdown.clone(), error=error,
        screened=screened,
    )
    if squeeze:
        fields = {k: t[0] for k, t in fields.items()}
    return QuadratureResult(steps=lz.steps, matvecs=lz.matvecs, rule=rule, **fields)
