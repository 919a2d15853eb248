"""Hessian-vector products restricted to one parameter: the diagonal block H_i of the Hessian.

For a model f_W, a parameter W_i (one named tensor, flattened to d_i entries) and data
{(x_n, y_n)}_{n=1..N}, the block operator is

    H_i u = d/dt grad_{W_i} L(W_i + t u) |_{t=0},    L(W) = (1/N) sum_n l(f_W(x_n), y_n),

with every other parameter and every buffer held fixed (detached). The loss l is softmax
cross-entropy, ``torch.nn.functional.cross_entropy``; this is a decision of the whole engine,
not an option: the Hessian distance measure of Ju, Li & Zhang (ICML 2022) is defined for the
classification loss the network was fine-tuned with. Over several batches the loss is the mean
over *all* examples, so each batch weighs by its size.

Two engines compute H_i u, and agree to round-off:

- ``"autograd"``: double backward. g = dL/dW_i with ``create_graph=True``, then
  H_i u = d<g, u>/dW_i (a vector-Jacobian product of g). The rows of a batched input share one
  gradient graph, one double-backward pass each.
- ``"func"``: forward-over-reverse, ``torch.func.jvp`` of ``torch.func.grad`` through
  ``torch.func.functional_call`` with only W_i as the differentiated input. Batched inputs are
  mapped with ``torch.func.vmap``.

The caller owns the model's mode: it must be in eval mode (BatchNorm on running statistics,
dropout off). Operators raise :class:`~hessaudit.errors.HessauditError` otherwise instead of
switching it.

:func:`cross_term_forms` is the quantity of the paper's released code: one HVP along all listed
parameters at once, read out per parameter (cross-layer terms included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from hessaudit.errors import HessauditError
from hessaudit.hessian._util import (
    BlockOperator,
    as_flat,
    as_rows,
    check_batches,
    check_eval_mode,
    check_xy,
    frozen_parameters,
    get_parameter,
)
from hessaudit.hessian.per_example import per_example_directional_second_derivative

BACKENDS = ("autograd", "func")

Batch = tuple[Tensor, Tensor]


class BlockHessian(BlockOperator):
    """The block H_i of the Hessian of the mean cross-entropy over ``batches``, as an operator.

    Args:
        model: the network, in eval mode. It is not modified.
        batches: a sequence of ``(x, y)`` pairs (inputs, integer labels). The loss is the mean
            over all their examples.
        param_name: the parameter whose diagonal block this is (a name from
            ``model.named_parameters()``).
        backend: ``"autograd"`` (double backward) or ``"func"`` (torch.func forward-over-reverse).
        cache_graph: (``"autograd"`` only) build each batch's gradient graph once and reuse it
            for every product, which then costs one double-backward pass instead of a forward,
            a backward and a double backward; the price is holding all those graphs in memory.
            Worth it for iterative methods (Lanczos, Hutchinson) on one or a few batches.
            torch.func has no cheap equivalent (``torch.func.linearize`` retraces the graph and
            was slower in our measurements), so ``backend="func"`` refuses it.
        chunk_size: with ``backend="func"``, how many vectors ``vmap`` processes at once in a
            batched product (``None``: all). Bounds memory.

    Attributes:
        size: number of entries d_i of the parameter.
        dtype, device: those of the parameter; vectors are converted to them.
        backend: the engine in use.
        num_examples: total number of examples N.
        num_matvecs: products computed so far; a ``(B, size)`` call counts B.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        param_name: str,
        *,
        backend: str = "autograd",
        cache_graph: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise HessauditError(
                f"unknown Hessian backend {backend!r}", hint=f"choose one of {', '.join(BACKENDS)}"
            )
        if cache_graph and backend != "autograd":
            raise HessauditError(
                "cache_graph is only supported by the autograd backend",
                hint="use backend='autograd' or cache_graph=False",
            )
        super().__init__(
            model, batches, param_name, cache_graph=cache_graph, chunk_size=chunk_size
        )
        self.backend = backend
        self._cache: list[object] | None = None

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", backend={self.backend!r})"

    def matvec(self, u: Tensor) -> Tensor:
        """H_i u for a flat ``(size,)`` vector, or row-wise for a ``(B, size)`` matrix."""
        check_eval_mode(self.model)
        if u.ndim == 1:
            rows = as_flat(u, self.size, dtype=self.dtype, device=self.device, what="u")[None]
        else:
            rows = as_rows(u, self.size, dtype=self.dtype, device=self.device, what="u")
        out = torch.zeros_like(rows)
        for index, (x, y) in enumerate(self.batches):
            out += self._batch_products(index, x, y, rows)
        self.num_matvecs += rows.shape[0]
        return out[0] if u.ndim == 1 else out

    __call__ = matvec

    # The loss of one batch, pre-scaled by 1/N so that summing batches gives the global mean.
    def _loss(self, x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
        frozen = frozen_parameters(self.model, exclude=[self.param_name])
        name, model, scale = self.param_name, self.model, 1.0 / self.num_examples

        def loss(w: Tensor) -> Tensor:
            logits = functional_call(model, {**frozen, name: w}, (x,))
            return F.cross_entropy(logits, y, reduction="sum") * scale

        return loss

    def _batch_products(self, index: int, x: Tensor, y: Tensor, rows: Tensor) -> Tensor:
        if self.backend == "autograd":
            return self._autograd_products(index, x, y, rows)
        return self._func_products(index, x, y, rows)

    def _autograd_products(self, index: int, x: Tensor, y: Tensor, rows: Tensor) -> Tensor:
        state = self._cached(index)
        if state is None:
            w = self.model.get_parameter(self.param_name).detach().requires_grad_(True)
            with torch.enable_grad():
                loss = self._loss(x, y)(w)
                (g,) = torch.autograd.grad(loss, w, create_graph=True)
            state = (w, g)
            self._store(index, state)
        w, g = state
        if not g.requires_grad:  # the loss is linear in W_i here: the block is zero
            return torch.zeros_like(rows)
        B = rows.shape[0]
        out = torch.zeros_like(rows)
        # One double-backward pass per row through the shared gradient graph. Measured on CPU
        # (small CNN, ResNet-18 layers): cheaper than a single is_grads_batched call, which
        # vmaps the backward and came out 1.0-1.9x slower than this loop with a cached graph.
        for b in range(B):
            keep = self.cache_graph or b < B - 1
            (hv,) = torch.autograd.grad(
                g, w, grad_outputs=rows[b].reshape(self.shape), retain_graph=keep,
                allow_unused=True,
            )
            if hv is not None:
                out[b] = hv.reshape(-1).detach()
        return out

    def _func_products(self, index: int, x: Tensor, y: Tensor, rows: Tensor) -> Tensor:
        w0 = self.model.get_parameter(self.param_name).detach()
        shape = self.shape
        grad_fn = torch.func.grad(self._loss(x, y))

        def one(u: Tensor) -> Tensor:
            return torch.func.jvp(grad_fn, (w0,), (u.reshape(shape),))[1].reshape(-1)

        if rows.shape[0] == 1:
            return one(rows[0])[None].detach()
        return torch.func.vmap(one, chunk_size=self.chunk_size)(rows).detach()

    def _cached(self, index: int) -> object | None:
        if not self.cache_graph or self._cache is None:
            return None
        return self._cache[index]

    def _store(self, index: int, state: object) -> None:
        if not self.cache_graph:
            return
        if self._cache is None:
            self._cache = [None] * len(self.batches)
        self._cache[index] = state

    def clear_cache(self) -> None:
        """Drop cached graphs (see ``cache_graph``)."""
        self._cache = None

    def to_dense(self) -> Tensor:
        """The block as a dense ``(size, size)`` matrix, column by column. For tests and tiny
        blocks only: it costs ``size`` products."""
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)


def cross_term_forms(
    model: nn.Module,
    batches: Sequence[Batch],
    vectors: Mapping[str, Tensor],
) -> dict[str, float]:
    """Per-parameter readout of one full Hessian-vector product: v_i^T (H v)_i.

    H is the Hessian of the mean cross-entropy over all examples of ``batches`` with respect to
    all parameters named in ``vectors`` jointly (parameters not named are held fixed, which is
    the same as giving them a zero direction), and v is the concatenation of the given vectors,
    each shaped like (or flattened to the size of) its parameter. The value for name i,

        v_i^T (H v)_i = v_i^T H_ii v_i + sum_{j != i} v_i^T H_ij v_j,

    includes cross-layer terms, so it can be negative; the values sum to v^T H v. This is what
    the paper's released code reports per layer; it is not the block quadratic form.

    Computed by double backward: one gradient with ``create_graph=True`` and one vector-Jacobian
    product of it per batch.
    """
    check_eval_mode(model)
    pairs = check_batches(batches)
    if not vectors:
        raise HessauditError("cross_term_forms needs at least one named vector")
    names = list(vectors)
    params = {n: get_parameter(model, n) for n in names}
    ws = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    vs = {
        n: as_flat(vectors[n], p.numel(), dtype=p.dtype, device=p.device, what=f"vector {n!r}")
        .reshape(p.shape)
        for n, p in params.items()
    }
    frozen = frozen_parameters(model, exclude=names)
    total = sum(int(x.shape[0]) for x, _ in pairs)
    hv = {n: torch.zeros_like(w) for n, w in ws.items()}
    for x, y in pairs:
        with torch.enable_grad():
            logits = functional_call(model, {**frozen, **ws}, (x,))
            loss = F.cross_entropy(logits, y, reduction="sum") / total
            grads = torch.autograd.grad(loss, list(ws.values()), create_graph=True)
            directional = sum((g * vs[n]).sum() for n, g in zip(names, grads, strict=True))
            if not directional.requires_grad:
                continue
            parts = torch.autograd.grad(directional, list(ws.values()), allow_unused=True)
        for n, part in zip(names, parts, strict=True):
            if part is not None:
                hv[n] += part.detach()
    return {n: float((vs[n] * hv[n]).sum()) for n in names}


def batch_quadratic_form(
    model: nn.Module, x: Tensor, y: Tensor, param_name: str, v: Tensor
) -> float:
    """v^T H_i v for the Hessian of the batch's *mean* cross-entropy (raw block form).

    Exact: the second directional derivative of the mean loss along v, by forward-over-forward
    differentiation (no iteration). Equals the mean of
    :func:`~hessaudit.hessian.per_example.per_example_directional_second_derivative`.
    """
    check_xy(x, y)
    forms = per_example_directional_second_derivative(model, x, y, param_name, v)
    return float(forms.mean())
