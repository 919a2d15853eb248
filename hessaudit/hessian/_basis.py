"""The Lanczos vectors of a batch of rows and the Gram-Schmidt against them.

Storage: (B, <= _BLOCK, d) blocks allocated as the steps are taken (never a second copy, as a
growing stacked buffer would need when resized; at most _BLOCK - 1 vectors ahead of the steps
taken, never more than the step budget in all). Gram-Schmidt runs one matrix product per block
instead of a few passes per vector (before issue 16: one vector at a time, twice every step).

Orthogonality (:meth:`LanczosBasis.reorthogonalize`): the inner products of the new vector
with every stored one are *measured* at each step (one pass over the vectors); the components
along the last two are always removed, the others only when one exceeds sqrt(eps) of the
vector's norm, by a full classical Gram-Schmidt (a second pass, and a third when the
Daniel-Gragg-Kaufman-Stewart criterion asks for it). Every vector then stays within sqrt(eps) of
orthogonal to all the others (semiorthogonality), which keeps the tridiagonal T_m the
projection of a matrix within O(eps ||H||) of H, as accurate as with full reorthogonalization
(Simon, "The Lanczos algorithm with partial reorthogonalization", Math. Comp. 1984). Measured on
the benchmark ViT's per-example blocks (float32, 40 steps): a full pass at 17 of 40 steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hessaudit.hessian.version import legacy

# Lanczos vectors per stored block
_BLOCK = 8
# a Gram-Schmidt pass that keeps at least this fraction of the norm needs no second pass
_DGKS = 1 / math.sqrt(2)


def _project(Q: Tensor, w: Tensor) -> Tensor:
    """(B, n) inner products of the rows of w (B, d) with the n vectors of each row of Q
    (B, n, d), as a row vector times a transposed matrix (measured 4x faster on CPU than the
    matrix-times-vector form, which reads Q with a stride)."""
    return torch.bmm(w.unsqueeze(1), Q.transpose(1, 2)).squeeze(1)


class LanczosBasis:
    """Up to ``max_vectors`` Lanczos vectors of B rows of dimension d (module docstring)."""

    def __init__(self, B: int, d: int, max_vectors: int, *, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.B, self.d, self.max_vectors = B, d, max_vectors
        self.dtype, self.device = dtype, device
        self.blocks: list[Tensor] = []
        self.stored = 0
        self.reorthogonalizations = 0
        # semiorthogonality: inner products above this are removed
        self._delta = math.sqrt(torch.finfo(dtype).eps)

    def store(self, q: Tensor) -> None:
        slot = self.stored % _BLOCK
        if slot == 0:
            size = min(_BLOCK, max(self.max_vectors - self.stored, 1))
            self.blocks.append(q.new_zeros(self.B, size, self.d))
        self.blocks[-1][:, slot] = q
        self.stored += 1

    def vector(self, j: int) -> Tensor:
        """The j-th Lanczos vector, (B, d) (a view into its block)."""
        return self.blocks[j // _BLOCK][:, j % _BLOCK]

    def views(self) -> list[Tensor]:
        """The stored vectors as (B, n_k, d) views, block by block."""
        full, rest = divmod(self.stored, _BLOCK)
        views = self.blocks[:full]
        return [*views, self.blocks[full][:, :rest]] if rest else views

    def reorthogonalize(self, j: int, w: Tensor, alpha: Tensor,
                        active: Tensor) -> tuple[Tensor, Tensor]:
        """Selective reorthogonalization by measured inner products: c = Q^T w against every
        stored vector (one pass over them). The components along q_j and q_{j-1} are always
        removed (q_j's goes into alpha_j); the others only when some |c_k| exceeds sqrt(eps)
        ||w|| in an active row, by the full Gram-Schmidt of :meth:`orthogonalize` (a second
        pass over the vectors). Below that the new vector is semiorthogonal, which keeps T_m
        accurate to working precision (Simon 1984). Returns w and alpha_j (float64)."""
        views = self.views()
        coefs = torch.cat([_project(Q, w) for Q in views], dim=1)
        far = coefs[:, : max(j - 1, 0)].abs().amax(dim=1) if j > 1 else coefs[:, :0].sum(1)
        if j > 1 and bool((active & (far > self._delta * w.norm(dim=1))).any()):
            w, correction = self.orthogonalize(w, coefs)
            self.reorthogonalizations += 1
            return w, (alpha + correction).double()
        for k in (j, j - 1) if j > 0 else (j,):
            w = w - coefs[:, k : k + 1] * self.vector(k)
        return w, (alpha + coefs[:, j]).double()

    def orthogonalize(self, w: Tensor, coefs: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """w minus its projection on every stored vector by classical Gram-Schmidt (all
        coefficients against the same w (``coefs`` when already computed), then one update),
        repeated once when the first pass
        removed more than 1 - 1/sqrt(2) of the norm of any row (the Daniel-Gragg-Kaufman-
        Stewart criterion: otherwise the first pass is already orthogonal to working precision;
        "twice is enough"). Returns the new w and the total coefficient of the last stored
        vector. (Before issue 16: always two passes, one vector at a time.)"""
        j = self.stored - 1
        correction = torch.zeros(self.B, dtype=w.dtype, device=w.device)
        for sweep in range(2):
            if legacy():
                coefs = [(self.vector(k) * w).sum(dim=1) for k in range(self.stored)]
                for k, c in enumerate(coefs):
                    w = w - c[:, None] * self.vector(k)
                correction = correction + coefs[j]
                continue
            before = w.norm(dim=1)
            views = self.views()
            if coefs is None or sweep > 0:  # (B, stored) coefficients against the same w
                coefs = torch.cat([_project(Q, w) for Q in views], 1)
            start = 0
            for Q in views:
                c = coefs[:, start : start + Q.shape[1]]
                w = w - torch.bmm(c.unsqueeze(1), Q).squeeze(1)
                start += Q.shape[1]
            correction = correction + coefs[:, j]
            if sweep == 0 and bool((w.norm(dim=1) >= _DGKS * before).all()):
                break
        return w, correction

