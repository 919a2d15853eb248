"""The second-order term that the Gauss-Newton fast path drops, for many layers at once.

For example n, layer i with module output y_i, direction v_i and the per-example loss l_n,
write t = (dy_i/dW_i) v_i and t2 = (d^2 y_i/dW_i^2)[v_i, v_i] (module-local; zero for a module
linear in its weight, as convolutions and linear layers are). Then

    d^2/ds^2 l_n(W_i + s v_i) = g_n + q_n + <r_n, t2_n>,

with g_n = u^T A u the Gauss-Newton form (u = dz/dy_i t), r_n = dl_n/dy_i and

    q_n = t^T [ d^2 (s_n . z_n) / dy_i^2 ] t,      s_n = dl_n/dz_n held fixed,

the second derivative of the logits contracted with the loss gradient. q is a Hessian-vector
product of one scalar with respect to y_i: one reverse pass with ``create_graph`` gives r for
every layer, then one double-backward pass per layer (through the part of the network after
it). For a piecewise-linear network q and t2 vanish exactly; a smooth operation anywhere after
the layer (hidden functional code included) makes them non-zero, which is what
:func:`~hessaudit.hessian.gauss_newton.confirm_piecewise_linear` looks for with a
forward-over-forward pass per layer.

Refused (``None``: the caller falls back to that per-layer check) when the graph contains a
custom ``torch.autograd.Function`` (its backward may not be twice differentiable, and a
non-differentiable backward would silently drop its second-order term) or a double backward
fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hessaudit.hessian._taps import Recording


def _has_custom_function(root: Tensor) -> bool:
    seen: set[int] = set()
    stack = [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            return True
        stack.extend(fn for fn, _ in node.next_functions)
    return False


def _second_tangent(rec: Recording, name: str, v: Tensor) -> Tensor | None:
    """t2 = d^2/ds^2 y_i(W_i + s v) at s = 0, module-local; None when it is zero because the
    module's output is linear in the parameter (:meth:`Recording.linear_in`)."""
    if rec.linear_in(name):
        return None
    f = rec.local(name)

    def first(w: Tensor) -> Tensor:
        return torch.func.jvp(f, (w,), (v,))[1]

    return torch.func.jvp(first, (rec.frozen[name],), (v,))[1].detach()


def second_order_terms(
    rec: Recording,
    names: Sequence[str],
    tangents: Mapping[str, Tensor],
    vectors: Mapping[str, Tensor],
    y: Tensor,
) -> dict[str, Tensor] | None:
    """``name -> (N,)`` values q_n + <r_n, t2_n> (module docstring) for the recorded batch with
    labels ``y``; ``tangents[name]`` is t. The graph of ``rec`` is consumed.

    First one double-backward pass along all layers' tangents at once, T = (t_1, ..., t_L):
    when the product of the Hessian of S = sum_n s_n . z_n with respect to all the taps and T
    is exactly zero in every entry (what autograd computes for a piecewise-linear network:
    the second derivative of every ReLU, pooling, BatchNorm in eval mode, convolution and
    linear map is structurally zero), every layer's q is zero, barring an exact cancellation
    of different layers' terms in every entry. Otherwise one double-backward pass per layer.
    """
    z = rec.logits
    assert z is not None
    if _has_custom_function(z):
        return None
    s = (torch.softmax(z.detach(), dim=-1) - F.one_hot(y, z.shape[-1]).to(z.dtype)).detach()
    leaves = rec.leaves(names)
    try:
        grads = torch.autograd.grad((s * z).sum(), leaves, create_graph=True,
                                    allow_unused=True)
        r_of = {id(leaf): r for leaf, r in zip(leaves, grads, strict=True)}
        out = {}
        for n in names:
            t2 = _second_tangent(rec, n, vectors[n].to(tangents[n].dtype))
            r = r_of[id(rec.sites[n].leaf)]
            zero = torch.zeros(tangents[n].shape[0], dtype=z.dtype, device=z.device)
            out[n] = zero if r is None or t2 is None else (r.detach() * t2).flatten(1).sum(1)
        if not _all_zero_curvature(r_of, rec, names, tangents):
            for n in names:
                out[n] = out[n] + _curvature(r_of[id(rec.sites[n].leaf)], rec, n, tangents[n])
    except RuntimeError:  # an operation without a double backward
        return None
    return out


def _all_zero_curvature(r_of: Mapping[int, Tensor | None], rec: Recording,
                        names: Sequence[str], tangents: Mapping[str, Tensor]) -> bool:
    """Whether the Hessian of S along all taps' tangents at once is exactly zero."""
    terms = [(r_of[id(rec.sites[n].leaf)] * tangents[n]).sum() for n in names
             if r_of[id(rec.sites[n].leaf)] is not None
             and r_of[id(rec.sites[n].leaf)].requires_grad]
    if not terms:
        return True
    leaves = rec.leaves(names)
    hv = torch.autograd.grad(torch.stack(terms).sum(), leaves, retain_graph=True,
                             allow_unused=True)
    return all(h is None or not bool(h.any()) for h in hv)


def _curvature(r: Tensor | None, rec: Recording, name: str, t: Tensor) -> Tensor:
    """(N,) q_n = t^T (d^2 S / dy_i^2) t for one layer, by one double-backward pass."""
    zero = torch.zeros(t.shape[0], dtype=t.dtype, device=t.device)
    if r is None or not r.requires_grad:
        return zero
    (hv,) = torch.autograd.grad((r * t).sum(), rec.sites[name].leaf, retain_graph=True,
                                allow_unused=True)
    return zero if hv is None else (hv.detach() * t).flatten(1).sum(1)
