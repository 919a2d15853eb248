"""Taps at the outputs of the modules that own a set of parameters.

One recorded forward pass gives, for every tapped parameter W_i, the input a_i of the module
M_i that owns it, and a leaf e_i added to that module's output y_i = M_i(a_i; W_i). By the chain
rule the logits z depend on W_i only through y_i (conditions below), so

    J_i v = (dz/dy_i) (dy_i/dW_i) v,

where (dy_i/dW_i) v is a JVP of M_i *alone* at its recorded input (module-local: the cost of one
call of M_i, see :meth:`Recording.local`) and dz/dy_i = dz/de_i comes from reverse passes, one
per class (batched), that serve every tapped layer at once (:func:`class_jacobians`). The leaf
is a zero tensor: y_i + e_i is exact, and the gradient with respect to e_i is dz/dy_i at the
value y_i had, even when later code modifies y_i in place.

When it applies. The chain rule above holds when W_i enters the forward pass only through that
one call of M_i, with that input. Each condition is checked on every recorded forward; a
parameter that fails one is *refused* (``Recording.refused`` says why) and callers fall back to
a whole-network JVP for it:

* M_i is not the root module; W_i is not registered under a second name (tied weights);
  neither M_i nor the process has forward pre-hooks and M_i has no forward hooks (re-running
  M_i must compute what the forward computed);
* M_i is called exactly once, and returns one floating-point tensor;
* W_i is an argument of no operation that runs outside M_i's forward (a ``TorchFunctionMode``
  watches every operation);
* M_i's input tensors are not modified in place after the call (version counters), and
  re-running M_i reproduces its recorded output (a checksum).

A forward pass that runs any operation with gradients disabled (a ``no_grad`` block) refuses
every parameter: reverse mode would not see through it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

from hessaudit.hessian._util import check_eval_mode, frozen_parameters

# forward methods linear in ``weight`` (plus the bias): the tangent along u is the map at u
_LINEAR_FORWARDS = (nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)

# Relative tolerance of the checksum comparison of a re-run module with its recorded output
# (bitwise equal on CPU; loose enough for non-deterministic GPU kernels, far too tight to
# hide a module that computes something else on its second call).
_CHECKSUM_RTOL = 1e-4


@dataclass(eq=False)
class _Site:
    """A module that owns tapped parameters, and what the recorded forward saw of it."""

    module: nn.Module
    attrs: dict[str, str] = field(default_factory=dict)  # parameter name -> attribute
    calls: int = 0
    active: int = 0
    refused: str | None = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    versions: list[tuple[Tensor, int]] = field(default_factory=list)
    checksum: tuple[float, float] = (0.0, 0.0)
    leaf: Tensor | None = None

    def refuse(self, reason: str) -> None:
        self.refused = self.refused or reason


def _detach(value: object) -> object:
    return value.detach() if isinstance(value, Tensor) else value


def _checksum(t: Tensor) -> tuple[float, float]:
    t = t.detach().double()
    return float(t.sum()), float(t.abs().sum())


class _Watch(TorchFunctionMode):
    """Refuses a site whose parameter is an argument of an operation outside its forward, and
    notes operations that run with gradients disabled."""

    def __init__(self, watched: dict[int, _Site]) -> None:
        super().__init__()
        self.watched = watched
        self.grad_disabled = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not torch.is_grad_enabled():
            self.grad_disabled = True
        for value in tree_leaves((args, kwargs)):
            site = self.watched.get(id(value)) if isinstance(value, Tensor) else None
            if site is not None and site.active == 0:
                site.refuse("its parameter is used outside the module's own forward")
        return func(*args, **kwargs)


def _shared_names(model: nn.Module) -> set[str]:
    """Names of parameters registered under more than one name (tied weights)."""
    seen: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        seen.setdefault(id(p), []).append(name)
    return {n for names in seen.values() if len(names) > 1 for n in names}


def _global_pre_hooks() -> bool:
    from torch.nn.modules import module as module_impl

    return bool(getattr(module_impl, "_global_forward_pre_hooks", None))


class Recording:
    """The logits of one forward pass with taps, and per tapped parameter what is needed to
    differentiate through its module alone. Build with :func:`record`."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.model = model
        self.frozen = frozen_parameters(model)
        self.refused: dict[str, str] = {}
        self.sites: dict[str, _Site] = {}
        self.logits: Tensor | None = None
        shared = _shared_names(model)
        by_module: dict[int, _Site] = {}
        for name in names:
            path, _, attr = name.rpartition(".")
            module = model.get_submodule(path) if path else model
            reason = None
            if not path:
                reason = "it is owned by the root module"
            elif name in shared:
                reason = "it is tied to another parameter"
            elif module._forward_hooks or module._forward_pre_hooks or _global_pre_hooks():
                reason = "its module has forward hooks"
            if reason is not None:
                self.refused[name] = reason
                continue
            site = by_module.setdefault(id(module), _Site(module))
            site.attrs[name] = attr
            self.sites[name] = site

    def _site_list(self) -> list[_Site]:
        return list({id(s): s for s in self.sites.values()}.values())

    def _after(self, site: _Site, module: nn.Module, args: tuple, kwargs: dict,
               out: object) -> object:
        site.active -= 1
        site.calls += 1
        if site.calls > 1:
            site.refuse("its module is called more than once")
            return None
        if not (isinstance(out, Tensor) and out.is_floating_point()):
            site.refuse("its module does not return one floating-point tensor")
            return None
        site.args, site.kwargs = tree_map(_detach, args), tree_map(_detach, kwargs)
        site.versions = [(t, t._version) for t in tree_leaves((site.args, site.kwargs))
                         if isinstance(t, Tensor)]
        site.checksum = _checksum(out)
        site.leaf = torch.zeros_like(out, requires_grad=True)
        return out + site.leaf

    def run(self, x: Tensor) -> None:
        sites = self._site_list()
        handles = []
        for site in sites:
            def pre(module, args, site=site):
                site.active += 1

            def post(module, args, kwargs, out, site=site):
                return self._after(site, module, args, kwargs, out)

            handles.append(site.module.register_forward_pre_hook(pre))
            handles.append(site.module.register_forward_hook(post, with_kwargs=True))
        watch = _Watch({id(self.frozen[n]): s for n, s in self.sites.items()})
        try:
            with torch.enable_grad(), watch:
                self.logits = functional_call(self.model, self.frozen, (x,))
        finally:
            for h in handles:
                h.remove()
        for site in sites:
            if site.calls == 0 or site.leaf is None:
                site.refuse(site.refused or "its module is not called by the forward")
        if watch.grad_disabled:
            for site in sites:
                site.refuse("the forward runs operations with gradients disabled")
        for name, site in list(self.sites.items()):
            if site.refused is not None:
                self.refused[name] = site.refused
                del self.sites[name]

    def local(self, name: str) -> Callable[[Tensor], Tensor]:
        """y(w): the module of ``name`` alone at its recorded input, as a function of that
        parameter (module-local). Refuses (``ValueError``) when the input was modified in place
        since the call; check the output of its first evaluation with :meth:`verify`."""
        site = self.sites[name]
        if any(t._version != version for t, version in site.versions):
            raise ValueError("the module's input was modified in place after the call")
        params = {n: p.detach() for n, p in site.module.named_parameters()}
        attr = site.attrs[name]

        def f(w: Tensor) -> Tensor:
            return functional_call(site.module, {**params, attr: w}, site.args, site.kwargs)

        return f

    def linear_in(self, name: str) -> bool:
        """Whether the module's output is linear in the parameter (plus a constant): the weight
        of torch's own Linear or Conv forward, called with one positional input. Such a module
        re-runs deterministically, so its tangent needs no :meth:`verify`."""
        site = self.sites[name]
        return (type(site.module).forward in _LINEAR_FORWARDS and site.attrs[name] == "weight"
                and len(site.args) == 1 and not site.kwargs)

    def tangent_map(self, name: str) -> Callable[[Tensor], Tensor]:
        """u -> (dy/dW) u for the module of ``name`` alone: the linear map itself when
        :meth:`linear_in` (no primal pass), else a JVP of :meth:`local`."""
        site = self.sites[name]
        f = self.local(name)
        if self.linear_in(name):
            module, (a,) = site.module, site.args
            if isinstance(module, nn.Linear):
                return lambda u: F.linear(a, u)
            return lambda u: module._conv_forward(a, u, None)
        w0 = self.frozen[name]
        return lambda u: torch.func.jvp(f, (w0,), (u,))[1]

    def verify(self, name: str, y: Tensor) -> None:
        """Refuse (``ValueError``) when ``y``, the module re-run at the recorded parameter
        value, does not reproduce the output the forward pass recorded."""
        s, a = _checksum(y)
        ref_s, ref_a = self.sites[name].checksum
        if abs(a - ref_a) > _CHECKSUM_RTOL * ref_a or abs(s - ref_s) > _CHECKSUM_RTOL * ref_a:
            raise ValueError("re-running the module does not reproduce its output")

    def leaves(self, names: Sequence[str]) -> list[Tensor]:
        """One leaf per distinct module of ``names`` (in first-seen order)."""
        out: dict[int, Tensor] = {}
        for n in names:
            leaf = self.sites[n].leaf
            assert leaf is not None
            out.setdefault(id(leaf), leaf)
        return list(out.values())


def record(model: nn.Module, x: Tensor, names: Sequence[str]) -> Recording:
    """Run the model on ``x`` (eval mode) with taps on the modules owning ``names``."""
    check_eval_mode(model)
    rec = Recording(model, names)
    rec.run(x)
    return rec


def class_jacobians(
    rec: Recording, leaves: Sequence[Tensor], classes: range, *, retain_graph: bool
) -> list[Tensor]:
    """dz_c/de for the classes in ``classes`` and every leaf: one ``(len(classes), N, *shape)``
    tensor per leaf (zeros where the logits do not depend on it), from one batched reverse
    pass. Row n of class c is the gradient of example n's logit c (examples are independent
    in eval mode)."""
    z = rec.logits
    assert z is not None
    seeds = torch.zeros((len(classes), *z.shape), dtype=z.dtype, device=z.device)
    for row, c in enumerate(classes):
        seeds[row, :, c] = 1
    with warnings.catch_warnings():
        # vmap's fallback for an op without a batching rule is correct, only slower
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        grads = torch.autograd.grad(
            z, list(leaves), grad_outputs=seeds, is_grads_batched=True,
            retain_graph=retain_graph, allow_unused=True,
        )
    return [
        g if g is not None else torch.zeros((len(classes), *leaf.shape), dtype=leaf.dtype,
                                             device=leaf.device)
        for g, leaf in zip(grads, leaves, strict=True)
    ]
