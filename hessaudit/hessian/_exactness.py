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


def _second_tangent(rec: Recording, name: str, v: Tensor) -> Tensor:
    """t2 = d^2/ds^2 y_i(W_i + s v) at s = 0, module-local."""
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
    labels ``y``; ``tangents[name]`` is t. The graph of ``rec`` is consumed."""
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
            leaf = rec.sites[n].leaf
            t = tangents[n]
            r = r_of[id(leaf)]
            if r is None:  # the logits do not depend on this layer
                out[n] = torch.zeros(t.shape[0], dtype=t.dtype, device=t.device)
                continue
            w = vectors[n].to(t.dtype)
            value = (r.detach() * _second_tangent(rec, n, w)).flatten(1).sum(1)
            if r.requires_grad:
                (hv,) = torch.autograd.grad((r * t).sum(), leaf, retain_graph=True,
                                            allow_unused=True)
                if hv is not None:
                    value = value + (hv.detach() * t).flatten(1).sum(1)
            out[n] = value.detach()
    except RuntimeError:  # an operation without a double backward
        return None
    return out
