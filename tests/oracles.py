"""Independent dense float64 oracles for the engine and the measure.

Everything here is computed the slow, obvious way: ``torch.autograd.functional.hessian`` of
the mean cross-entropy as a function of a flat parameter block (a loop over examples for
per-example Hessians), ``eigh`` for the positive part ``H^+``, matrices with a known spectrum.
None of it shares code with ``hessaudit.hessian``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from tests.cases import DTYPE


def block_loss(
    model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], name: str, *,
    reduction: str = "mean",
):
    """The mean cross-entropy over all examples as a function of the flat block ``name``."""
    p = model.get_parameter(name)
    total = sum(x.shape[0] for x, _ in batches)

    def loss(w_flat: Tensor) -> Tensor:
        w = w_flat.reshape(p.shape)
        out = 0.0
        for x, y in batches:
            logits = functional_call(model, {name: w}, (x,))
            out = out + F.cross_entropy(logits, y, reduction="sum")
        return out / total if reduction == "mean" else out

    return loss


def dense_block_hessian(
    model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], name: str
) -> Tensor:
    """Independent oracle: torch.autograd.functional.hessian of the flat-block loss."""
    w = model.get_parameter(name).detach().reshape(-1).clone()
    return torch.autograd.functional.hessian(block_loss(model, batches, name), w)


def dense_per_example_hessians(
    model: nn.Module, x: Tensor, y: Tensor, name: str, *, vectorized: bool = False
) -> Tensor:
    """(N, d, d) stack of per-example dense block Hessians.

    By default a loop of :func:`dense_block_hessian` (an oracle, not the engine). With
    ``vectorized``, ``torch.func.vmap`` of ``torch.func.hessian`` (forward-over-reverse) of the
    one-example loss: the same matrices to rounding, about 40x faster, for the tests that need
    many examples.
    """
    if not vectorized:
        return torch.stack([
            dense_block_hessian(model, [(x[n : n + 1], y[n : n + 1])], name)
            for n in range(x.shape[0])
        ])
    p = model.get_parameter(name)
    w = p.detach().reshape(-1).clone()

    def one(w_flat: Tensor, xn: Tensor, yn: Tensor) -> Tensor:
        logits = functional_call(model, {name: w_flat.reshape(p.shape)}, (xn[None],))
        return F.cross_entropy(logits, yn[None])

    return torch.func.vmap(torch.func.hessian(one), in_dims=(None, 0, 0))(w, x, y).detach()


def known_spectrum(
    eigenvalues: Sequence[float] | Tensor, seed: int, *, dtype: torch.dtype = DTYPE
) -> Tensor:
    """Q diag(eigenvalues) Q^T with Q a seeded random orthogonal matrix."""
    lam = torch.as_tensor(eigenvalues, dtype=dtype)
    d = lam.numel()
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    return (q * lam) @ q.T


def positive_part(matrix: Tensor) -> Tensor:
    """H^+ by eigh: keep the positive eigenvalues."""
    lam, vec = torch.linalg.eigh(matrix)
    return (vec * lam.clamp_min(0)) @ vec.T


def dense_joint_hessian(
    model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], names: Sequence[str]
) -> tuple[Tensor, list[int]]:
    """Dense Hessian of the mean loss w.r.t. the concatenation of ``names`` (others fixed),
    cross-layer blocks included; and the blocks' sizes, in order."""
    params = [model.get_parameter(n) for n in names]
    sizes = [p.numel() for p in params]
    total = sum(x.shape[0] for x, _ in batches)

    def loss(flat):
        parts = torch.split(flat, sizes)
        override = {n: part.reshape(p.shape) for n, part, p in zip(names, parts, params,
                                                                   strict=True)}
        return sum(F.cross_entropy(functional_call(model, override, (x,)), y, reduction="sum")
                   for x, y in batches) / total

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    return torch.autograd.functional.hessian(loss, flat), sizes


def quadratic_forms(hessian: Tensor, v: Tensor) -> tuple[float, float]:
    """``(v^T H v, v^T H^+ v)``, the second with :func:`positive_part`."""
    return float(v @ hessian @ v), float(v @ positive_part(hessian) @ v)


def eigh_forms(hessian: Tensor, v: Tensor) -> tuple[float, float]:
    """``(v^T H v, v^T H^+ v)`` from the eigendecomposition: with ``c = Q^T v``, the sums
    ``sum_i c_i^2 lambda_i`` over all eigenvalues and over the positive ones."""
    lam, vec = torch.linalg.eigh(hessian)
    c = (vec.T @ v).square()
    return float(c @ lam), float(c @ lam.clamp_min(0))


def softmax_hessian(p: Tensor) -> Tensor:
    """``diag(p) - p p^T`` for each row of the probabilities ``p`` (N, k): the Hessian of the
    cross-entropy in the logits, whatever the label."""
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def close(a: Tensor, b: Tensor, rtol: float = 1e-10) -> bool:
    """``max |a - b| <= rtol * max |b|``: agreement relative to the oracle ``b``'s scale."""
    scale = max(float(b.abs().max()), 1e-300)
    return float((a - b).abs().max()) <= rtol * scale
