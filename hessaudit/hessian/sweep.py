"""The exact fast path for many layers at once: Gauss-Newton forms, products and probe forms
from reverse passes shared by every layer.

For a piecewise-linear network the per-example block Hessian of layer i is the Gauss-Newton
block J_i^T A J_i (:mod:`hessaudit.hessian.gauss_newton`), and every quantity the audit needs
from it goes through u = J_i v. Per layer and batch, :func:`~hessaudit.hessian.gauss_newton.
per_example_gauss_newton_forms` gets u from one forward-mode pass through the network: about
3 forward passes per layer (1.5-5 measured on ResNet-18 at 32 examples). With the chain rule
at the output y_i of the module that owns W_i (:mod:`hessaudit.hessian._taps`),

    u_{n,c} = < dz_{n,c}/dy_i , (dy_i/dW_i) v >,

and dz_c/dy_i for *every* layer comes out of one forward pass and one reverse pass per class
(k classes, batched with ``is_grads_batched``), while (dy_i/dW_i) v is a JVP of the module
alone. A batch then costs about 3 + k forward passes for all layers together instead of about 3
per layer: reverse mode wins when the class count is small next to the number of layers, and
:class:`LayerwiseGaussNewton` uses it when ``k <= 2 * layers`` (otherwise, and for every
parameter the chain rule cannot be trusted for (see :mod:`~hessaudit.hessian._taps`), it falls
back to the per-layer JVP). The spectrum reuses the same Jacobians: with C_n = dz_n/dy_i kept
for the spectrum examples, a Gauss-Newton product

    G_i u = (1/N) sum_n (dy_i/dW_i)^T C_n^T A_n C_n (dy_i/dW_i) u

costs a JVP and a VJP of the module alone, and a Hutchinson sample z^T G_i z a JVP of the
module alone. Same quantities as the per-layer path, equal up to float round-off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hessaudit.hessian._exactness import second_order_terms
from hessaudit.hessian._taps import Recording, class_jacobians, record
from hessaudit.hessian._util import BlockOperator, as_flat, as_rows, check_eval_mode, check_xy
from hessaudit.hessian.gauss_newton import (
    BlockGaussNewton,
    agreement,
    confirm_piecewise_linear,
    default_rtol,
    gauss_newton_forms,
    gauss_newton_probe_forms,
    per_example_gauss_newton_forms,
)
from hessaudit.hessian.version import legacy

Batch = tuple[Tensor, Tensor]

# Reverse mode when the class count is at most this many times the number of layers.
REVERSE_CLASSES_PER_LAYER = 2
# Bytes of class Jacobians held at once (the spectrum's cache, and each batched reverse pass).
JACOBIAN_BUDGET_BYTES = 256 << 20


@dataclass
class _Part:
    """One batch's share of a layer's spectrum operator."""

    logits: Tensor  # (N_b, k), detached
    jacobian: Tensor  # (k, N_b, P): dz_c/dy_i per example, flattened
    tangent: Callable[[Tensor], Tensor]  # u -> (dy_i/dW_i) u, module-local
    vjp: Callable  # (dy_i/dW_i)^T at the fine-tuned weights
    shape: torch.Size  # of y_i


def _batch_key(*tensors: Tensor) -> tuple:
    """Identifies a batch by where its data lives, not by the Python object, so that repeated
    slices ``x[:8]`` of one tensor share cached results; the version counters make an in-place
    change a different batch. (The caches keep the batch alive, so its memory is not reused.)"""
    return tuple(
        (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(),
         t.dtype, t.device, t._version)
        for t in tensors
    )


def _contract(jac: Tensor, dy: Tensor) -> Tensor:
    """(N, k): u_{n,c} = <jac[c, n], dy[n]> for ``jac`` of shape (k, N, P). Written as a batch
    of row-vector-times-matrix products over the examples: no copy of ``jac`` (an einsum
    permutes it into a contiguous copy first, 4x slower on CPU)."""
    n = dy.shape[0]
    return torch.bmm(dy.reshape(n, 1, -1), jac.permute(1, 2, 0)).squeeze(1)


def _contract_back(jac: Tensor, a: Tensor) -> Tensor:
    """(N, P): sum_c a[n, c] jac[c, n], the transpose of :func:`_contract`."""
    return torch.bmm(a.unsqueeze(1), jac.permute(1, 0, 2)).squeeze(1)


class LayerwiseGaussNewton:
    """Gauss-Newton forms of many layers, and their spectrum operators, from shared passes.

    Args:
        model: in eval mode; not modified.
        vectors: parameter name -> direction v_i (shaped like the parameter or flat), in the
            order the layers will be asked for.
        memory_budget: bytes of class Jacobians held at once.

    ``forms``, ``block`` and ``probe_forms`` are drop-in replacements for
    :func:`~hessaudit.hessian.gauss_newton.per_example_gauss_newton_forms`,
    :class:`~hessaudit.hessian.gauss_newton.BlockGaussNewton` and
    :func:`~hessaudit.hessian.gauss_newton.gauss_newton_probe_forms`: the first request for a
    batch computes every layer's forms for it; a spectrum request computes the class
    Jacobians of as many of the following layers as fit the budget.

    Attributes: ``reverse_passes`` (class rows of reverse passes run), ``fallbacks``
    (parameter name -> why it took the per-layer JVP).
    """

    def __init__(self, model: nn.Module, vectors: Mapping[str, Tensor], *,
                 memory_budget: int = JACOBIAN_BUDGET_BYTES) -> None:
        check_eval_mode(model)
        params = dict(model.named_parameters())
        self.model = model
        self.vectors = {n: v.reshape(params[n].shape) for n, v in vectors.items()}
        self.names = list(self.vectors)
        self.budget = memory_budget
        self.reverse_passes = 0
        self.fallbacks: dict[str, str] = {}
        # batch key -> (the batch, kept alive so that its storage is not reused; results)
        self._forms: dict[tuple, tuple[Tensor, dict[str, Tensor]]] = {}
        self._exact: dict[tuple, tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]] = {}
        self._group: tuple[tuple[tuple, ...], dict[str, list[_Part]]] | None = None

    # ------------------------------------------------------------------ forms
    def forms(self, x: Tensor, y: Tensor, name: str, v: Tensor) -> Tensor:
        """(N,) Gauss-Newton forms v^T J_{i,n}^T A_n J_{i,n} v of the batch, as
        :func:`~hessaudit.hessian.gauss_newton.per_example_gauss_newton_forms` computes them."""
        check_xy(x, y)
        if not self._covers(name, v):
            return per_example_gauss_newton_forms(self.model, x, y, name, v)
        key = _batch_key(x)
        if key not in self._forms:
            self._forms[key] = (x, self._batch_forms(x))
        forms = self._forms[key][1].get(name)
        if forms is None:
            return per_example_gauss_newton_forms(self.model, x, y, name, v)
        return forms

    def confirm(self, x: Tensor, y: Tensor, name: str, v: Tensor, *,
                rtol: float | None = None) -> tuple[bool, float]:
        """:func:`~hessaudit.hessian.gauss_newton.confirm_piecewise_linear` for ``name``, with
        the exact forms g + q + <r, t2> of :mod:`~hessaudit.hessian._exactness` computed for
        every layer on the first request for the batch ``x``."""
        if not self._covers(name, v):
            return confirm_piecewise_linear(self.model, x, y, name, v, rtol=rtol)
        key = _batch_key(x, y)
        if key not in self._exact:
            self._exact[key] = (x, self._batch_exact(x, y))
        if name not in self._exact[key][1]:
            return confirm_piecewise_linear(self.model, x, y, name, v, rtol=rtol)
        gn, exact = self._exact[key][1][name]
        tol = default_rtol(gn.dtype) if rtol is None else float(rtol)
        return agreement(gn, exact, tol)

    def _batch_exact(self, x: Tensor, y: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        rec = record(self.model, x, self.names)
        if not self._reverse(rec) or not rec.sites:
            return {}
        tangents = self._tangents(rec, [n for n in self.names if n in rec.sites])
        forms = self._forms_from(rec, tangents, retain_graph=True)
        extra = second_order_terms(rec, list(tangents), tangents, self.vectors, y)
        if extra is None:
            return {}
        return {n: (forms[n], forms[n] + extra[n]) for n in tangents}

    def _covers(self, name: str, v: Tensor) -> bool:
        if legacy() or name not in self.vectors:
            return False
        mine = self.vectors[name]
        return v.numel() == mine.numel() and bool(torch.equal(v.reshape(mine.shape), mine))

    def _reverse(self, rec: Recording) -> bool:
        assert rec.logits is not None
        k = rec.logits.shape[-1]
        if rec.logits.ndim != 2 or k > REVERSE_CLASSES_PER_LAYER * len(self.names):
            for n in self.names:
                self.fallbacks.setdefault(n, f"{k} classes: per-layer JVPs are cheaper")
            return False
        for n, why in rec.refused.items():
            self.fallbacks.setdefault(n, why)
        return True

    def _tangents(self, rec: Recording, names: Sequence[str]) -> dict[str, Tensor]:
        """(dy_i/dW_i) v_i for each name, module-local; names that fail the checks drop out."""
        out = {}
        for n in names:
            w0 = rec.frozen[n]
            v = self.vectors[n].to(w0.dtype)
            try:
                if rec.linear_in(n):
                    t = rec.tangent_map(n)(v)
                else:
                    y, t = torch.func.jvp(rec.local(n), (w0,), (v,))
                    rec.verify(n, y)
            except ValueError as err:
                self.fallbacks.setdefault(n, str(err))
                continue
            out[n] = t.detach()
        return out

    def _class_chunks(self, k: int, leaves: Sequence[Tensor]) -> list[range]:
        per_class = sum(leaf.numel() * leaf.element_size() for leaf in leaves)
        size = max(1, min(k, self.budget // max(per_class, 1)))
        return [range(s, min(s + size, k)) for s in range(0, k, size)]

    def _batch_forms(self, x: Tensor) -> dict[str, Tensor]:
        rec = record(self.model, x, self.names)
        if not self._reverse(rec) or not rec.sites:
            return {}
        tangents = self._tangents(rec, [n for n in self.names if n in rec.sites])
        return self._forms_from(rec, tangents, retain_graph=False)

    def _forms_from(self, rec: Recording, tangents: Mapping[str, Tensor], *,
                    retain_graph: bool) -> dict[str, Tensor]:
        """Gauss-Newton forms u^T A u, u_{n,c} = <dz_{n,c}/dy_i, t_i>, of the names of
        ``tangents`` (t_i = (dy_i/dW_i) v_i), from batched reverse passes over class chunks."""
        assert rec.logits is not None
        z = rec.logits.detach()
        names = list(tangents)
        leaves = rec.leaves(names)
        index = {id(leaf): i for i, leaf in enumerate(leaves)}
        u = {n: torch.empty(z.shape, dtype=z.dtype, device=z.device) for n in names}
        chunks = self._class_chunks(z.shape[-1], leaves)
        for j, chunk in enumerate(chunks):
            keep = retain_graph or j < len(chunks) - 1
            jac = class_jacobians(rec, leaves, chunk, retain_graph=keep)
            self.reverse_passes += len(chunk)
            for n in names:
                leaf_jac = jac[index[id(rec.sites[n].leaf)]]
                u[n][:, chunk.start : chunk.stop] = _contract(leaf_jac.flatten(2), tangents[n])
            del jac
        return {n: gauss_newton_forms(z, u[n]) for n in names}

    # ------------------------------------------------------------------ spectrum
    def block(self, batches: Sequence[Batch], name: str, *,
              cache_graph: bool = False) -> BlockOperator:
        """The Gauss-Newton block of ``name`` over ``batches`` (the mean over their examples):
        products through the cached class Jacobians when they fit the budget, else a
        :class:`~hessaudit.hessian.gauss_newton.BlockGaussNewton`."""
        parts = self._parts(batches, name)
        if parts is None:
            return BlockGaussNewton(self.model, batches, name, cache_graph=cache_graph)
        return OutputJacobianGaussNewton(self.model, batches, name, parts)

    def probe_forms(self, x: Tensor, name: str, Z: Tensor, *,
                    chunk_size: int | None = None) -> Tensor:
        """``(P, N)`` forms z_p^T J_{i,n}^T A_n J_{i,n} z_p of the probe rows ``Z``, as
        :func:`~hessaudit.hessian.gauss_newton.gauss_newton_probe_forms` computes them; through
        the cached Jacobians when ``x`` is a batch of the last :meth:`block` of ``name``."""
        part = self._cached_part(x, name)
        if part is None:
            return gauss_newton_probe_forms(self.model, x, name, Z, chunk_size=chunk_size)
        w0 = self.model.get_parameter(name).detach()
        Z = as_rows(Z, w0.numel(), dtype=w0.dtype, device=w0.device, what="Z")
        rows = []
        for z in Z:
            dy = part.tangent(z.reshape(w0.shape))
            rows.append(gauss_newton_forms(part.logits, _contract(part.jacobian, dy)))
        return torch.stack(rows).detach()

    def _cached_part(self, x: Tensor, name: str) -> _Part | None:
        if self._group is None or legacy():
            return None
        key, parts = self._group
        if name not in parts or _batch_key(x) not in key:
            return None
        return parts[name][key.index(_batch_key(x))]

    def _parts(self, batches: Sequence[Batch], name: str) -> list[_Part] | None:
        if legacy() or name not in self.vectors or name in self.fallbacks:
            return None
        key = tuple(_batch_key(x) for x, _ in batches)
        if self._group is None or self._group[0] != key or name not in self._group[1]:
            self._group = None  # free the previous group before building the next
            self._group = (key, self._build_group(batches, name))
        return self._group[1].get(name)

    def _build_group(self, batches: Sequence[Batch], first: str) -> dict[str, list[_Part]]:
        """Class Jacobians of ``first`` and of the tappable layers after it (in ``vectors``
        order) that fit the budget together, for every batch; {} when ``first`` cannot."""
        wanted = self.names[self.names.index(first):]
        group: list[str] = []
        parts: dict[str, list[_Part]] = {}
        for b, (x, _) in enumerate(batches):
            rec = record(self.model, x, wanted if b == 0 else group)
            if not self._reverse(rec):
                return {}
            if b == 0:
                group = self._fit(rec, wanted, sum(len(xb) for xb, _ in batches) / len(x))
            lin = {}
            for n in group:
                try:
                    f = rec.local(n)
                    y, vjp = torch.func.vjp(f, rec.frozen[n])
                    rec.verify(n, y)
                except ValueError as err:
                    self.fallbacks.setdefault(n, str(err))
                    return {}
                lin[n] = (rec.tangent_map(n), vjp)
            if first not in lin:
                return {}
            leaves = rec.leaves(group)
            assert rec.logits is not None
            k = rec.logits.shape[-1]
            jac = class_jacobians(rec, leaves, range(k), retain_graph=False)
            self.reverse_passes += k
            flat = {id(leaf): j.flatten(2).detach() for leaf, j in zip(leaves, jac, strict=True)}
            z = rec.logits.detach()
            for n in group:
                leaf = rec.sites[n].leaf
                assert leaf is not None
                f, vjp = lin[n]
                parts.setdefault(n, []).append(_Part(z, flat[id(leaf)], f, vjp, leaf.shape))
        return parts

    def _fit(self, rec: Recording, wanted: Sequence[str], batches_factor: float) -> list[str]:
        """The tappable names of ``wanted``, in order, up to the budget (the first one always,
        if tappable: a layer alone over budget is refused by the caller's fallback)."""
        assert rec.logits is not None
        k = rec.logits.shape[-1]
        seen: set[int] = set()
        used, group = 0.0, []
        for n in wanted:
            site = rec.sites.get(n)
            if site is None or site.leaf is None or n in self.fallbacks:
                continue
            if id(site.leaf) not in seen:
                used += k * site.leaf.numel() * site.leaf.element_size() * batches_factor
                seen.add(id(site.leaf))
            if used > self.budget:
                break
            group.append(n)
        return group


class OutputJacobianGaussNewton(BlockOperator):
    """G_i = (1/N) sum_n J_{i,n}^T A_n J_{i,n} with J_{i,n} = C_n (dy_i/dW_i): the operator of
    :class:`~hessaudit.hessian.gauss_newton.BlockGaussNewton`, from class Jacobians C_n kept by
    :class:`LayerwiseGaussNewton` (a product costs a JVP and a VJP of the module alone)."""

    def __init__(self, model: nn.Module, batches: Sequence[Batch], name: str,
                 parts: list[_Part]) -> None:
        super().__init__(model, batches, name, cache_graph=True, chunk_size=None)
        self._parts = parts
        self._softmax = [torch.softmax(part.logits, dim=-1) for part in parts]

    def matvec(self, u: Tensor) -> Tensor:
        """G_i u for flat ``(size,)`` u, or row-wise for ``(B, size)``."""
        if u.ndim == 1:
            rows = as_flat(u, self.size, dtype=self.dtype, device=self.device, what="u")[None]
        else:
            rows = as_rows(u, self.size, dtype=self.dtype, device=self.device, what="u")
        out = torch.zeros_like(rows)
        scale = 1.0 / self.num_examples
        for part, p in zip(self._parts, self._softmax, strict=True):
            for b in range(rows.shape[0]):
                dy = part.tangent(rows[b].reshape(self.shape))
                ju = _contract(part.jacobian, dy)
                a_ju = p * ju - p * (p * ju).sum(dim=-1, keepdim=True)
                cot = _contract_back(part.jacobian, a_ju * scale)
                out[b] += part.vjp(cot.reshape(part.shape))[0].reshape(-1).detach()
        self.num_matvecs += rows.shape[0]
        return out[0] if u.ndim == 1 else out

    __call__ = matvec

    def clear_cache(self) -> None:
        """Nothing to drop: the Jacobians belong to the :class:`LayerwiseGaussNewton`, which
        keeps one budget's worth of them."""


__all__ = ["LayerwiseGaussNewton", "OutputJacobianGaussNewton"]
