"""Per-example block Hessian-vector products from a cached graph (the Lanczos path's hot loop).

:func:`~hessaudit.hessian.per_example.per_example_hvp` maps a forward-over-reverse HVP over the
examples: every product recomputes the forward and the backward pass. Lanczos takes tens of
products per example from the same examples, so :class:`ExampleGraph` builds the graph once:
with one copy W^(n) of the block's parameter per example (shape ``(B, *shape)``),

    L(W^(1), ..., W^(B)) = sum_n l_n(W^(n)),      g = dL/dW  (``create_graph=True``),

row n of g is example n's gradient g_n(W^(n)) and depends on W^(n) alone (examples are
independent in eval mode), so one double-backward pass through the cached graph,

    d<g, U>/dW = (H_1 U_1, ..., H_B U_B),

gives every row's product: about 3 forward passes' worth per product where the recomputing HVP
took 9-14 (measured on the benchmark ViT's layers). Same products up to float round-off.

Memory: the graph (about 3 activations of each example, more for attention) plus two copies of
the parameter per example. :class:`CachedPerExampleHVP` measures it on one example first and
caches a graph only when it fits ``memory_budget``; otherwise it falls back to the recomputing
HVP. It rebuilds the graph on the examples still iterating when fewer than half of the cached
ones are (a finished row's product would still cost as much as a live one's).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from hessaudit.hessian._util import frozen_parameters

# Bytes a cached per-example graph may hold (see the module docstring).
GRAPH_BUDGET_BYTES = 512 << 20


class ExampleGraph:
    """The per-example gradients of the examples ``x, y`` with their graph (module docstring).

    ``products(U)`` returns the rows H_n U[n], ``U`` of shape ``(B, size)``.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, param_name: str) -> None:
        param = model.get_parameter(param_name)
        self.shape = param.shape
        frozen = frozen_parameters(model, exclude=[param_name])

        def loss_one(w: Tensor, xn: Tensor, yn: Tensor) -> Tensor:
            logits = functional_call(model, {**frozen, param_name: w}, (xn.unsqueeze(0),))
            return F.cross_entropy(logits, yn.unsqueeze(0))

        self.w = param.detach().unsqueeze(0).expand(x.shape[0], *self.shape).clone()
        self.w.requires_grad_(True)
        with torch.enable_grad():
            losses = torch.func.vmap(loss_one)(self.w, x, y)
            (self.g,) = torch.autograd.grad(losses.sum(), self.w, create_graph=True)

    def products(self, U: Tensor) -> Tensor:
        if not self.g.requires_grad:  # the loss is linear in the block here: H_n = 0
            return torch.zeros_like(U)
        (hv,) = torch.autograd.grad(self.g, self.w, grad_outputs=U.reshape(self.g.shape),
                                    retain_graph=True, allow_unused=True)
        if hv is None:
            return torch.zeros_like(U)
        return hv.reshape(U.shape).detach()


def graph_bytes_per_example(model: nn.Module, x: Tensor, y: Tensor, param_name: str) -> int:
    """Bytes an :class:`ExampleGraph` holds per example, measured on the first example (the
    tensors its graph saves, counted without deduplication, plus the parameter copy and the
    gradient)."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        graph = ExampleGraph(model, x[:1], y[:1], param_name)
        if graph.g.requires_grad:  # the double backward saves tensors too
            graph.products(torch.zeros_like(graph.w).reshape(1, -1))
    return total + 2 * graph.w.numel() * graph.w.element_size()


def examples_per_graph(model: nn.Module, x: Tensor, y: Tensor, param_name: str, *,
                       memory_budget: int = GRAPH_BUDGET_BYTES) -> int | None:
    """How many examples like ``x[0]`` an :class:`ExampleGraph` of ``param_name`` may hold
    within ``memory_budget`` (0 when not even one fits); ``None`` when no graph can be built
    (an operation without a batched double backward). In both cases the products are
    recomputed, at any batch size."""
    per_example = _graph_bytes_or_none(model, x, y, param_name)
    return None if per_example is None else memory_budget // max(per_example, 1)


def _graph_bytes_or_none(model: nn.Module, x: Tensor, y: Tensor, param_name: str) -> int | None:
    """:func:`graph_bytes_per_example`, or ``None`` when the graph cannot be built."""
    try:
        return graph_bytes_per_example(model, x, y, param_name)
    except RuntimeError:  # an operation without a batched double backward
        return None


class CachedPerExampleHVP:
    """``matvec(U, rows)`` for :class:`~hessaudit.hessian.per_example.PerExampleBlockHessians`:
    the blocks of the examples ``rows`` (sorted indices into the batch ``x, y``) times the rows
    of ``U``, through an :class:`ExampleGraph` when it fits ``memory_budget``, else by
    ``fallback(U, rows)`` (a recomputing per-example HVP)."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, param_name: str, *,
                 fallback: Callable[[Tensor, Tensor], Tensor],
                 memory_budget: int = GRAPH_BUDGET_BYTES) -> None:
        self.model, self.x, self.y, self.param_name = model, x, y, param_name
        self.fallback = fallback
        self.budget = memory_budget
        self._graph: ExampleGraph | None = None
        self._rows: Tensor | None = None  # example indices of the cached graph
        self.rebuilds = 0

    @functools.cached_property
    def _per_example(self) -> int | None:
        """Bytes of the graph per example, measured once on first use (None: no graph)."""
        return _graph_bytes_or_none(self.model, self.x, self.y, self.param_name)

    def _fits(self, n: int) -> bool:
        return self._per_example is not None and n * self._per_example <= self.budget

    def matvec(self, U: Tensor, rows: Tensor) -> Tensor:
        n = int(rows.shape[0])
        if self._graph is None or not self._covers(rows):
            self._graph = self._rows = None  # free the old graph first
            if not self._fits(n):
                return self.fallback(U, rows)
            self._graph = ExampleGraph(self.model, self.x.index_select(0, rows),
                                       self.y.index_select(0, rows.to(self.y.device)),
                                       self.param_name)
            self._rows = rows.clone()
            self.rebuilds += 1
        assert self._rows is not None
        if n == self._rows.shape[0] and bool(torch.equal(rows, self._rows)):
            return self._graph.products(U)
        position = torch.searchsorted(self._rows, rows)
        full = U.new_zeros((self._rows.shape[0], U.shape[1]))
        full[position] = U
        return self._graph.products(full).index_select(0, position)

    def _covers(self, rows: Tensor) -> bool:
        """The cached graph holds every row of ``rows`` and at most twice as many."""
        if self._rows is None or 2 * rows.shape[0] < self._rows.shape[0]:
            return False
        position = torch.searchsorted(self._rows, rows).clamp_max(self._rows.shape[0] - 1)
        return bool(torch.equal(self._rows[position], rows))

    def clear(self) -> None:
        self._graph = self._rows = None
