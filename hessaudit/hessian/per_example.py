"""Per-example block Hessians: H_{i,n} = d^2 l(f_W(x_n), y_n) / dW_i^2, one per example.

The loss l is softmax cross-entropy (``torch.nn.functional.cross_entropy``) of the single
example, the engine-wide decision (see :mod:`hessaudit.hessian.operator`). All other parameters
and the buffers are held fixed.

Everything here is vectorized over the examples with ``torch.func`` instead of a Python loop:

- :func:`per_example_hvp` maps ``vmap`` over (x_n, y_n, u_n) of a forward-over-reverse HVP
  (``jvp`` of ``grad`` through ``functional_call``): row n of the result is H_{i,n} u_n.
- :func:`per_example_directional_second_derivative` needs no vmap at all: with one direction v
  shared by all examples, the vector of per-example losses (l_1(W_i), ..., l_N(W_i)) has second
  directional derivative (v^T H_{i,1} v, ..., v^T H_{i,N} v), which a nested forward-mode
  ``jvp`` (forward-over-forward) delivers in one batched pass.

Both rely on example n's loss depending on x_n alone, which holds for every standard layer in
eval mode (BatchNorm on running statistics); the model must be in eval mode and we refuse it
otherwise. BatchNorm without running statistics (``track_running_stats=False``) would couple the
examples even in eval mode; such models are not supported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from hessaudit.errors import HessauditError
from hessaudit.hessian._util import (
    as_flat,
    as_rows,
    check_eval_mode,
    check_xy,
    frozen_parameters,
    get_parameter,
)
from hessaudit.hessian.exact_norms import exact_norms
from hessaudit.hessian.per_example_graph import CachedPerExampleHVP
from hessaudit.hessian.version import legacy


def per_example_hvp(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    param_name: str,
    U: Tensor,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Row n of the result is H_{i,n} U[n], the block Hessian of example n's loss times U[n].

    Args:
        model: the network, in eval mode.
        x, y: a batch of N inputs and N integer labels.
        param_name: the block's parameter.
        U: ``(N, size)``, one direction per example.
        chunk_size: examples per ``vmap`` chunk (``None``: all at once); bounds memory.

    Returns:
        ``(N, size)`` tensor in the parameter's dtype.
    """
    check_eval_mode(model)
    check_xy(x, y)
    param = get_parameter(model, param_name)
    size, shape = param.numel(), param.shape
    U = as_rows(U, size, dtype=param.dtype, device=param.device, what="U")
    if U.shape[0] != x.shape[0]:
        raise HessauditError(f"U has {U.shape[0]} rows but the batch has {x.shape[0]} examples")
    w0 = param.detach()
    frozen = frozen_parameters(model, exclude=[param_name])

    def loss_one(w: Tensor, xn: Tensor, yn: Tensor) -> Tensor:
        logits = functional_call(model, {**frozen, param_name: w}, (xn.unsqueeze(0),))
        return F.cross_entropy(logits, yn.unsqueeze(0))

    grad_one = torch.func.grad(loss_one)

    def hvp_one(xn: Tensor, yn: Tensor, un: Tensor) -> Tensor:
        _, hv = torch.func.jvp(lambda w: grad_one(w, xn, yn), (w0,), (un.reshape(shape),))
        return hv.reshape(-1)

    return torch.func.vmap(hvp_one, chunk_size=chunk_size)(x, y, U).detach()


def per_example_directional_second_derivative(
    model: nn.Module, x: Tensor, y: Tensor, param_name: str, v: Tensor
) -> Tensor:
    """``(N,)`` vector of v^T H_{i,n} v, exact, by forward-over-forward differentiation.

    With phi(t) = (l_n(W_i + t v))_n, phi''(0) = (v^T H_{i,n} v)_n. A ``jvp`` of a ``jvp`` along
    the same direction gives all N values in one pass, at about the cost of a few forwards.
    The values are raw block forms (they can be negative for smooth networks). Normalization
    layers run under :func:`~hessaudit.hessian.exact_norms.exact_norms`.
    """
    check_eval_mode(model)
    check_xy(x, y)
    param = get_parameter(model, param_name)
    v = as_flat(v, param.numel(), dtype=param.dtype, device=param.device, what="v")
    v = v.reshape(param.shape)
    w0 = param.detach()
    frozen = frozen_parameters(model, exclude=[param_name])

    def losses(w: Tensor) -> Tensor:
        logits = functional_call(model, {**frozen, param_name: w}, (x,))
        return F.cross_entropy(logits, y, reduction="none")

    def first(w: Tensor) -> Tensor:
        return torch.func.jvp(losses, (w,), (v,))[1]

    with exact_norms():  # torch's second forward derivative of layer_norm is wrong
        _, second = torch.func.jvp(first, (w0,), (v,))
    return second.detach()


class PerExampleBlockHessians:
    """The N per-example blocks H_{i,1}, ..., H_{i,N} as one batched operator.

    ``matvec(U)`` with ``U`` of shape ``(N, size)`` returns the rows H_{i,n} U[n]; it is the
    operator the batched Lanczos routines of :mod:`hessaudit.hessian.lanczos` expect. With
    ``rows=`` (a 1-D index tensor of length B) it applies only those examples' blocks to a
    ``(B, size)`` input, which lets Lanczos skip rows that have converged.

    ``cache_graph`` (default: on, unless the old engine is selected with
    :mod:`hessaudit.hessian.version`) computes the products by double backward through a graph
    built once for the examples still iterating
    (:class:`~hessaudit.hessian.per_example_graph.CachedPerExampleHVP`, about 3x cheaper per
    product; it falls back to :func:`per_example_hvp` when the graph would not fit its memory
    budget). ``chunk_size`` applies to :func:`per_example_hvp`.

    Attributes:
        size, dtype, device: of the parameter.
        batch: N, the number of examples (and operators).
        num_matvecs: per-example products computed so far (a call on B rows counts B).
    """

    def __init__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        param_name: str,
        *,
        chunk_size: int | None = None,
        cache_graph: bool | None = None,
    ) -> None:
        check_eval_mode(model)
        check_xy(x, y)
        param = get_parameter(model, param_name)
        self.model = model
        self.x = x
        self.y = y
        self.param_name = param_name
        self.chunk_size = chunk_size
        self.size: int = param.numel()
        self.dtype: torch.dtype = param.dtype
        self.device: torch.device = param.device
        self.batch: int = int(x.shape[0])
        self.num_matvecs: int = 0
        if cache_graph is None:
            cache_graph = not legacy()
        self._cached = (
            CachedPerExampleHVP(model, x, y, param_name, fallback=self._recompute)
            if cache_graph else None
        )

    def __repr__(self) -> str:
        return f"PerExampleBlockHessians({self.param_name!r}, size={self.size}, batch={self.batch})"

    def _recompute(self, U: Tensor, rows: Tensor) -> Tensor:
        x, y = self.x.index_select(0, rows), self.y.index_select(0, rows.to(self.y.device))
        return per_example_hvp(self.model, x, y, self.param_name, U,
                               chunk_size=self.chunk_size)

    def matvec(self, U: Tensor, *, rows: Tensor | None = None) -> Tensor:
        if self._cached is not None:
            param = get_parameter(self.model, self.param_name)
            U = as_rows(U, self.size, dtype=param.dtype, device=param.device, what="U")
            index = torch.arange(self.batch, device=self.x.device) if rows is None else rows
            if U.shape[0] != index.shape[0]:
                raise HessauditError(
                    f"U has {U.shape[0]} rows but {index.shape[0]} examples were selected"
                )
            out = self._cached.matvec(U, index.to(self.x.device))
            self.num_matvecs += out.shape[0]
            return out
        x, y = self.x, self.y
        if rows is not None:
            rows = rows.to(device=x.device)
            x, y = x.index_select(0, rows), y.index_select(0, rows.to(y.device))
        out = per_example_hvp(
            self.model, x, y, self.param_name, U, chunk_size=self.chunk_size
        )
        self.num_matvecs += out.shape[0]
        return out

    __call__ = matvec

    def directional_second_derivatives(self, v: Tensor) -> Tensor:
        """(N,) raw forms v^T H_{i,n} v for one shared direction v (exact)."""
        return per_example_directional_second_derivative(
            self.model, self.x, self.y, self.param_name, v
        )
