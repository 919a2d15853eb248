"""Lanczos with full reorthogonalization, for a batch of independent symmetric operators.

Conventions shared by every routine here:

- ``matvec`` applies a *batch* of B symmetric operators row-wise: it maps ``(B, d) -> (B, d)``
  and row b of its output is H_b times row b of its input. A single operator is B = 1.
  If ``matvec`` accepts a keyword ``rows`` (as
  :meth:`~hessaudit.hessian.per_example.PerExampleBlockHessians.matvec` does), it is called as
  ``matvec(U_sub, rows=index)`` with only the rows still iterating, so finished rows cost
  nothing; otherwise it always receives all B rows (finished rows are zero).
- One operator with B start vectors is the same thing (every row's operator is that one H):
  :class:`~hessaudit.hessian.operator.BlockHessian` accepts ``(B, d)`` inputs, so the forms of
  several directions on one block run together.
- Memory: full reorthogonalization stores every Lanczos vector: B * m * d numbers in the
  operator's dtype after m steps (m <= ``max_steps``), plus a few (B, d) temporaries. For
  example 64 examples x 100 steps x 2.4M entries (a ResNet-18 layer4 conv) in float32 is
  61 GB: size B to the layer.
- Start vectors ``v`` may be ``(B, d)`` or 1-D ``(d,)``. For a 1-D start vector the per-row
  fields of the result are 0-d tensors; for ``(B, d)`` they are ``(B,)`` tensors.
- Lanczos vectors live in the operator's dtype and device (stored and orthogonalized by
  :class:`~hessaudit.hessian._basis.LanczosBasis`) (float32 by default in an audit);
  the tridiagonal coefficients and their small eigenproblems are float64.

The Lanczos process from q_1 = v / ||v|| builds an orthonormal basis Q_m of the Krylov space
K_m(H, v) and the tridiagonal T_m = Q_m^T H Q_m (diagonal alpha, off-diagonal beta). Every new
vector is orthogonalized against *all* previous ones, twice (classical Gram-Schmidt, "twice is
enough"), so T_m stays accurate with no ghost eigenvalues; the price is storing the m vectors
(B * m * d numbers). When the residual norm beta_m falls below ``breakdown_tol`` times the
operator scale (the largest ||H q_j|| seen), the Krylov space is exhausted (it is H-invariant):
that row stops and everything computed from T_m is exact.

Gauss quadrature. With T_m = S diag(theta) S^T,

    v^T f(H) v  ~  ||v||^2 sum_j S[0, j]^2 f(theta_j),

exact for polynomials of degree <= 2m - 1 and, once the Krylov space is exhausted, for every f.
For f(t) = t (the raw form) it is exact at every step: ||v||^2 alpha_1 = v^T H v. For the
positive part f(t) = max(t, 0) it converges as m grows, not monotonically;
:mod:`hessaudit.hessian.quadrature` runs it with an error estimate behind its stopping rule.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from hessaudit.errors import HessauditError
from hessaudit.hessian._basis import LanczosBasis
from hessaudit.hessian._util import check_generator, random_normal
from hessaudit.hessian.version import legacy

MatVec = Callable[..., Tensor]

DEFAULT_EIGEN_STEPS = 100
DEFAULT_EIGEN_TOL = 1e-3


def default_breakdown_tol(dtype: torch.dtype) -> float:
    """beta / scale below this is a breakdown: 0.01 * sqrt(machine epsilon) of ``dtype``
    (1.5e-10 in float64, 3.5e-6 in float32).

    After the Krylov space is exhausted, the computed beta is round-off amplified by the
    earlier small betas (measured: 3e-12 relative in float64 on a clustered spectrum, i.e.
    ~1e4 eps), so a few-eps threshold misses real breakdowns. Stopping at a coupling beta
    changes the quadrature by about beta / scale relative to ||v||^2 ||H||, far below any
    tolerance we use. Missing a breakdown is harmless apart from wasted products: full
    reorthogonalization keeps the noise vectors orthogonal and their quadrature weight ~0.
    """
    return 0.01 * math.sqrt(torch.finfo(dtype).eps)


def _accepts_rows(matvec: MatVec) -> bool:
    try:
        return "rows" in inspect.signature(matvec).parameters
    except (TypeError, ValueError):
        return False


class _Lanczos:
    """The shared iteration. Rows stop on breakdown or when a caller calls :meth:`stop`."""

    def __init__(self, matvec: MatVec, V: Tensor, *, max_steps: int,
                 breakdown_tol: float | None) -> None:
        if V.ndim != 2:
            raise HessauditError(f"start vectors must be (B, d) or (d,), got {tuple(V.shape)}")
        if max_steps < 1:
            raise HessauditError(f"the Lanczos step budget must be >= 1, got {max_steps}")
        self.matvec = matvec
        self.pass_rows = _accepts_rows(matvec)
        self.B, self.d = V.shape
        self.dtype = V.dtype
        self.max_steps = max_steps
        self.tol = default_breakdown_tol(V.dtype) if breakdown_tol is None else breakdown_tol
        norms = V.norm(dim=1)
        self.v_norm = norms.to(torch.float64)
        self.active = norms > 0
        safe = norms.clamp_min(torch.finfo(V.dtype).tiny)[:, None]
        q = torch.where(self.active[:, None], V / safe, torch.zeros_like(V))
        self.basis = LanczosBasis(self.B, self.d, max_steps, dtype=V.dtype, device=V.device)
        self.basis.store(q)
        self.alphas = torch.zeros(self.B, max_steps, dtype=torch.float64, device=V.device)
        self.betas = torch.zeros(self.B, max_steps, dtype=torch.float64, device=V.device)
        self.rayleigh = torch.zeros(self.B, dtype=torch.float64, device=V.device)
        self.lengths = torch.zeros(self.B, dtype=torch.long, device=V.device)
        self.breakdown = torch.zeros(self.B, dtype=torch.bool, device=V.device)
        self.scale = torch.zeros(self.B, dtype=torch.float64, device=V.device)
        self.steps = 0
        self.matvecs = 0

    @property
    def stored(self) -> int:
        return self.basis.stored

    def vector(self, j: int) -> Tensor:
        """The j-th Lanczos vector, (B, d) (a view into its block)."""
        return self.basis.vector(j)

    def _apply(self, q: Tensor) -> Tensor:
        n_active = int(self.active.sum())
        self.matvecs += n_active
        if self.pass_rows:
            index = self.active.nonzero().squeeze(1)
            w = torch.zeros_like(q)
            w[index] = self.matvec(q.index_select(0, index), rows=index).to(q.dtype)
            return w
        w = self.matvec(q)
        if w.shape != q.shape:
            raise HessauditError(
                f"matvec returned shape {tuple(w.shape)} for input {tuple(q.shape)}"
            )
        # A finished row's operator may still be called on a zero vector; keep it out exactly.
        return torch.where(self.active[:, None], w.to(q.dtype), torch.zeros_like(q))

    def step(self) -> None:
        j = self.steps
        if j >= self.max_steps:
            raise RuntimeError("Lanczos step budget exhausted")
        act = self.active
        q = self.vector(j)
        w = self._apply(q)
        self.scale = torch.where(act, torch.maximum(self.scale, w.norm(dim=1).double()),
                                 self.scale)
        alpha = (q * w).sum(dim=1)
        if j == 0:
            self.rayleigh = alpha.double()
        w = w - alpha[:, None] * q
        if j > 0:
            w = w - self.betas[:, j - 1].to(w.dtype)[:, None] * self.vector(j - 1)
        if legacy():
            w, correction = self.basis.orthogonalize(w)
            alpha = (alpha + correction).double()
        else:
            w, alpha = self.basis.reorthogonalize(j, w, alpha, self.active)
        beta = w.norm(dim=1).double()
        self.alphas[:, j] = torch.where(act, alpha, 0.0)
        self.betas[:, j] = torch.where(act, beta, 0.0)
        self.lengths += act.long()
        broke = act & (beta <= self.tol * self.scale)
        self.breakdown |= broke
        self.active = act & ~broke
        scale = torch.where(self.active, beta, 1.0).to(w.dtype)
        if j + 1 < self.max_steps:  # the last step's residual is never used as a vector
            self.basis.store(torch.where(self.active[:, None], w / scale[:, None],
                                         torch.zeros_like(w)))
        self.steps = j + 1

    def stop(self, rows: Tensor) -> None:
        self.active = self.active & ~rows

    def tridiagonal(self, rows: Tensor, m: int) -> Tensor:
        """Dense float64 T_m for the selected rows, shape (len(rows), m, m)."""
        a = self.alphas[rows, :m]
        T = torch.diag_embed(a)
        if m > 1:
            b = self.betas[rows, : m - 1]
            T = T + torch.diag_embed(b, offset=1) + torch.diag_embed(b, offset=-1)
        return T


class LanczosInfo(NamedTuple):
    """Per-row facts of a Lanczos run (all tensors are ``(B,)``)."""

    lengths: Tensor  # steps taken by each row (alphas[b, :lengths[b]] are valid)
    breakdown: Tensor  # the row's Krylov space was exhausted (its quadrature is exact)
    v_norm: Tensor  # ||v_b||, float64
    residual: Tensor  # beta after the row's last step (0 at breakdown), float64
    scale: Tensor  # operator scale estimate max_j ||H q_j||, float64
    matvecs: int  # operator applications summed over rows


class LanczosTridiagonal(NamedTuple):
    alphas: Tensor  # (B, m) float64, zero-padded past each row's length
    betas: Tensor  # (B, m - 1) float64, zero-padded
    info: LanczosInfo


def lanczos_tridiagonal(
    matvec: MatVec,
    v0: Tensor,
    *,
    steps: int,
    breakdown_tol: float | None = None,
) -> LanczosTridiagonal:
    """Run up to ``steps`` Lanczos steps per row from ``v0`` with full reorthogonalization.

    Returns ``(alphas, betas, info)``: the tridiagonal coefficients, float64, of shapes
    ``(B, m)`` and ``(B, m - 1)`` with m the most steps any row took; row b's valid part is its
    first ``info.lengths[b]`` entries (the rest is zero). A row with ``||v0_b|| = 0`` takes no
    step; a row that breaks down stops there. For a 1-D ``v0``, B = 1 and the shapes keep their
    leading 1.
    """
    V = v0[None] if v0.ndim == 1 else v0
    lz = _Lanczos(matvec, V, max_steps=steps, breakdown_tol=breakdown_tol)
    while lz.steps < steps and bool(lz.active.any()):
        lz.step()
    m = max(lz.steps, 1)
    last = (lz.lengths - 1).clamp_min(0)
    residual = torch.where(lz.breakdown, 0.0, lz.betas.gather(1, last[:, None]).squeeze(1))
    residual = torch.where(lz.lengths > 0, residual, 0.0)
    info = LanczosInfo(lz.lengths, lz.breakdown, lz.v_norm, residual, lz.scale, lz.matvecs)
    return LanczosTridiagonal(lz.alphas[:, :m].clone(), lz.betas[:, : m - 1].clone(), info)


def _tensor_to_python(t: Tensor) -> Any:
    return t.detach().cpu().tolist()


def _positive_estimate(T: Tensor, v_norm2: Tensor) -> Tensor:
    """The Gauss rule ||v||^2 sum_j S[0, j]^2 max(theta_j, 0) for a batch of tridiagonals."""
    theta, S = torch.linalg.eigh(T)
    return v_norm2 * (S[:, 0, :].square() * theta.clamp_min(0)).sum(dim=1)


@dataclass(frozen=True)
class EigenResult:
    """An extreme eigenvalue estimate of one operator.

    Attributes:
        value: the eigenvalue estimate (Ritz value or Rayleigh quotient).
        steps: Lanczos steps or power iterations taken.
        residual: ||H q - value q|| / max(|value|, tiny) for the unit vector q that goes with it.
        converged: the method's stopping rule was met (or the Krylov space exhausted).
        matvecs: operator applications.
        method: ``"lanczos"`` or ``"power"``.
        last_change: relative change of ``value`` over the last step.
    """

    value: float
    steps: int
    residual: float
    converged: bool
    matvecs: int
    method: str
    last_change: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "steps": self.steps,
            "residual": self.residual,
            "converged": self.converged,
            "matvecs": self.matvecs,
            "method": self.method,
            "last_change": self.last_change,
        }


def _relative(num: float, den: float) -> float:
    if num == 0.0:
        return 0.0
    return num / den if den > 0 else math.inf


def lanczos_top_eigenvalue(
    matvec: MatVec,
    size: int,
    *,
    generator: torch.Generator,
    max_steps: int = DEFAULT_EIGEN_STEPS,
    tol: float = DEFAULT_EIGEN_TOL,
    residual_tol: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    breakdown_tol: float | None = None,
) -> EigenResult:
    """Largest (algebraic) eigenvalue of one symmetric operator by Lanczos.

    ``matvec`` maps a 1-D ``(size,)`` vector to ``H`` times it. The start vector is Gaussian
    from ``generator``. After each step m the top Ritz value theta_m of T_m and its residual
    ||H y - theta_m y|| = beta_m |S[m-1, top]| (no extra product needed) are computed; the run
    stops when

        |theta_m - theta_{m-1}| <= tol * |theta_m|   and   residual <= residual_tol * |theta_m|

    (``residual_tol`` defaults to sqrt(tol): the Ritz value error is of the order of the squared
    residual over the spectral gap), on breakdown (exact), or after ``max_steps``.
    """
    check_generator(generator)
    if size < 1:
        raise HessauditError(f"operator size must be >= 1, got {size}")
    rtol = math.sqrt(tol) if residual_tol is None else residual_tol
    v0 = random_normal(size, generator=generator, dtype=dtype, device=device)
    lz = _Lanczos(lambda U: matvec(U[0])[None], v0[None], max_steps=max_steps,
                  breakdown_tol=breakdown_tol)
    theta_prev = math.nan
    theta, residual, change, converged = 0.0, 0.0, math.nan, False
    tiny = torch.finfo(torch.float64).tiny
    while lz.steps < max_steps:
        lz.step()
        m = lz.steps
        evals, S = torch.linalg.eigh(lz.tridiagonal(torch.tensor([0], device=lz.alphas.device),
                                                    m)[0])
        theta = float(evals[-1])
        beta = 0.0 if bool(lz.breakdown[0]) else float(lz.betas[0, m - 1])
        residual = _relative(beta * float(S[-1, -1].abs()), max(abs(theta), tiny))
        if m > 1:
            change = _relative(abs(theta - theta_prev), max(abs(theta), tiny))
        else:
            change = 0.0 if bool(lz.breakdown[0]) else math.nan
        if bool(lz.breakdown[0]) or (m > 1 and change <= tol and residual <= rtol):
            converged = True
            break
        theta_prev = theta
    return EigenResult(
        value=theta, steps=lz.steps, residual=residual, converged=converged,
        matvecs=lz.matvecs, method="lanczos", last_change=change,
    )
