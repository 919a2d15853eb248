"""The exact fast path for piecewise-linear networks: block Hessian = Gauss-Newton block.

For one example, write z = f_W(x) in R^k for the logits and J_i = dz/dW_i. The block Hessian of
the softmax cross-entropy l(z, y) (the engine-wide loss, ``torch.nn.functional.cross_entropy``)
splits as

    H_i = J_i^T A J_i + sum_c (dl/dz_c) d^2 z_c / dW_i^2,     A = diag(p) - p p^T,  p = softmax(z).

When every layer is piecewise linear (ReLU / LeakyReLU, max and average pooling, BatchNorm in
eval mode, convolutions, linear layers), z is piecewise linear in W_i with the other parameters
fixed, the second term vanishes (almost everywhere, and in autograd's convention at the kinks),
and H_i = J_i^T A J_i exactly. A is positive semidefinite with A 1 = 0, so H_i is positive
semidefinite of rank at most k - 1: its positive part is itself, and

    v^T H_i^+ v = v^T H_i v = u^T A u,   u = J_i v,

one forward-mode Jacobian-vector product, no iteration. The label y drops out (A does not depend
on it). Sums over examples (batch and mean Hessians) inherit all of this.

For smooth networks the same operator is the generalized Gauss-Newton matrix, a positive
semidefinite approximation of H_i, not H_i. Whether a model qualifies is decided from its modules
(:func:`is_piecewise_linear`) and must be confirmed numerically on a batch
(:func:`confirm_piecewise_linear`), because a module's ``forward`` can hide arbitrary functional
code (``F.gelu``, ``x * y``, softmax) that no inspection of the module tree reveals.

Note that ReLU networks violate the smoothness assumption of the paper's Theorem 2.1; the fast
path computes the paper's quantity exactly, it does not make the theorem apply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hessaudit.errors import HessauditError
from hessaudit.hessian._util import (
    BlockOperator,
    as_flat,
    as_rows,
    check_eval_mode,
    check_xy,
    frozen_parameters,
    get_parameter,
)
from hessaudit.hessian.per_example import per_example_directional_second_derivative

Batch = tuple[Tensor, Tensor]

# Modules whose own computation is piecewise linear in their input and in their own parameters.
# Subclasses qualify only when they keep the base class's forward (StdConv2d, a Conv2d subclass,
# standardizes its weight and is not linear in it).
_TORCH_PIECEWISE_LINEAR: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Threshold,
    nn.Hardshrink, nn.Softshrink,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
    nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
)

# Pure containers: no computation of their own beyond calling children in order (Sequential)
# or not at all (ModuleList / ModuleDict hold modules for a parent's forward).
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

# timm classes known to be piecewise linear in eval mode (their children are checked too:
# BatchNormAct2d's ``act`` must itself qualify). Looked up by name so any timm version works.
_TIMM_PIECEWISE_LINEAR_NAMES = (
    "Linear", "BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNorm2d", "FrozenBatchNormAct2d",
    "Conv2dSame", "AvgPool2dSame", "MaxPool2dSame", "SelectAdaptivePool2d",
    "AdaptiveAvgMaxPool2d", "AdaptiveCatAvgMaxPool2d", "FastAdaptiveAvgPool",
    "FastAdaptiveMaxPool", "FastAdaptiveAvgMaxPool", "FastAdaptiveCatAvgMaxPool",
    "DropPath", "DropBlock2d", "BlurPool2d",
)

# Composite classes whose name says they compute something nonlinear in their own forward even
# when all their children are linear (attention: softmax of q k^T).
_NONLINEAR_NAME_HINTS = ("attention", "attn")


def _timm_classes() -> tuple[type, ...]:
    try:
        import timm.layers as layers
    except Exception:  # timm absent or broken: no timm class can be present anyway
        return ()
    found = (getattr(layers, name, None) for name in _TIMM_PIECEWISE_LINEAR_NAMES)
    return tuple(c for c in found if isinstance(c, type))


def _own_forward_is_piecewise_linear(module: nn.Module, timm_classes: tuple[type, ...]) -> bool:
    cls = type(module)
    if cls in timm_classes or cls in _TORCH_PIECEWISE_LINEAR:
        return True
    for base in _TORCH_PIECEWISE_LINEAR:
        if isinstance(module, base) and cls.forward is base.forward:
            return True
    return False


def _reason(module: nn.Module, timm_classes: tuple[type, ...]) -> str | None:
    """Why ``module`` breaks piecewise linearity, or None if its own computation is fine."""
    cls = type(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
        not module.track_running_stats or module.running_mean is None
    ):
        return "BatchNorm without running statistics uses batch statistics"
    if isinstance(module, _CONTAINERS):
        return None
    if _own_forward_is_piecewise_linear(module, timm_classes):
        return None
    has_children = next(module.children(), None) is not None
    if not has_children:
        return "not a known piecewise-linear layer"
    if any(h in cls.__name__.lower() for h in _NONLINEAR_NAME_HINTS):
        return "attention is not piecewise linear"
    if next(module.parameters(recurse=False), None) is not None:
        return "has parameters of its own used by an unknown forward"
    # A composite of unknown class (a ResNet block, a user's Net): trusted if its children are,
    # because inspection cannot see its forward; confirm_piecewise_linear checks numerically.
    return None


def _walk(module: nn.Module, prefix: str, timm_classes: tuple[type, ...], out: list[str]) -> None:
    reason = _reason(module, timm_classes)
    if reason is not None:
        out.append(f"{prefix or '<root>'} ({type(module).__name__}: {reason})")
    # Keep descending past an offender so the message lists every culprit, not the outermost.
    for name, child in module.named_children():
        _walk(child, f"{prefix}.{name}" if prefix else name, timm_classes, out)


def non_piecewise_linear_modules(model: nn.Module) -> list[str]:
    """Modules that rule out the fast path, as ``"name (Class: reason)"`` strings.

    A module passes when its own computation is piecewise linear in its input and parameters
    (a whitelist of torch and timm layers, matched by class; a subclass only if it keeps the
    base ``forward``) and all its children pass. Pure containers pass; composites of unknown
    class pass when they have no parameters of their own and their name does not suggest
    attention (their ``forward`` is invisible here: confirm numerically). Anything else,
    e.g. GELU, SiLU, Tanh, Sigmoid, Softmax, LayerNorm, GroupNorm, attention, is reported.
    An empty list means the module tree looks piecewise linear.
    """
    out: list[str] = []
    _walk(model, "", _timm_classes(), out)
    return out


def is_piecewise_linear(model: nn.Module) -> bool:
    """True when every module of ``model`` is piecewise linear by class (see
    :func:`non_piecewise_linear_modules`). Necessary, not sufficient: confirm numerically with
    :func:`confirm_piecewise_linear` before trusting the fast path."""
    return not non_piecewise_linear_modules(model)


def _logits_fn(model: nn.Module, param_name: str, x: Tensor) -> Callable[[Tensor], Tensor]:
    frozen = frozen_parameters(model, exclude=[param_name])

    def logits(w: Tensor) -> Tensor:
        return functional_call(model, {**frozen, param_name: w}, (x,))

    return logits


def logit_jvp(model: nn.Module, x: Tensor, param_name: str, v: Tensor) -> tuple[Tensor, Tensor]:
    """Logits z = f_W(x), shape (N, k), and u = J_i v, shape (N, k), from one forward-mode pass.

    ``v`` is shaped like the parameter or flat. Only ``param_name`` is perturbed; other
    parameters and buffers are fixed. The model must be in eval mode.
    """
    check_eval_mode(model)
    param = get_parameter(model, param_name)
    v = as_flat(v, param.numel(), dtype=param.dtype, device=param.device, what="v")
    z, u = torch.func.jvp(_logits_fn(model, param_name, x), (param.detach(),),
                          (v.reshape(param.shape),))
    return z.detach(), u.detach()


def gauss_newton_forms(logits: Tensor, u: Tensor) -> Tensor:
    """(N,) per-example u_n^T (diag p_n - p_n p_n^T) u_n with p_n = softmax(logits_n).

    Evaluated as the p-weighted variance of u, sum_c p_c (u_c - ubar)^2 with ubar = sum_c p_c u_c,
    which equals sum p u^2 - (sum p u)^2 but cannot cancel catastrophically and is nonnegative
    by construction (no clamping needed).
    """
    if logits.shape != u.shape or logits.ndim != 2:
        raise HessauditError(
            f"logits {tuple(logits.shape)} and u {tuple(u.shape)} must both be (N, k)"
        )
    p = torch.softmax(logits, dim=-1)
    mean = (p * u).sum(dim=-1, keepdim=True)
    return (p * (u - mean).square()).sum(dim=-1)


def per_example_gauss_newton_forms(
    model: nn.Module, x: Tensor, y: Tensor, param_name: str, v: Tensor
) -> Tensor:
    """(N,) Gauss-Newton forms v^T J_{i,n}^T A_n J_{i,n} v; one JVP for the whole batch.

    For a piecewise-linear network this is exactly v^T H_{i,n} v = v^T H_{i,n}^+ v. ``y`` is
    validated but unused: A_n does not depend on the label.
    """
    check_xy(x, y)
    z, u = logit_jvp(model, x, param_name, v)
    return gauss_newton_forms(z, u)


def gauss_newton_probe_forms(
    model: nn.Module, x: Tensor, param_name: str, Z: Tensor, *, chunk_size: int | None = None
) -> Tensor:
    """``(P, N)`` Gauss-Newton forms z_p^T J_{i,n}^T A_n J_{i,n} z_p for the probe rows of ``Z``.

    Forward-mode only: one JVP per probe, vectorized over probes with ``vmap`` (the primal
    forward is shared). Summing row p over examples and dividing by N gives z_p^T G_i z_p, the
    Hutchinson sample of the Gauss-Newton block without any reverse pass.
    """
    check_eval_mode(model)
    param = get_parameter(model, param_name)
    Z = as_rows(Z, param.numel(), dtype=param.dtype, device=param.device, what="Z")
    fn = _logits_fn(model, param_name, x)
    w0, shape = param.detach(), param.shape

    def one(z: Tensor) -> Tensor:
        logits, u = torch.func.jvp(fn, (w0,), (z.reshape(shape),))
        return gauss_newton_forms(logits, u)

    if Z.shape[0] == 1:
        return one(Z[0])[None].detach()
    return torch.func.vmap(one, chunk_size=chunk_size)(Z).detach()


class BlockGaussNewton(BlockOperator):
    """The Gauss-Newton block G_i = (1/N) sum_n J_{i,n}^T A_n J_{i,n} over ``batches``.

    Equal to the block Hessian :class:`~hessaudit.hessian.operator.BlockHessian` for a
    piecewise-linear network, and cheaper: a product is a JVP of the logits, a k x k weighting
    and a VJP (no second-order differentiation). For other networks it is the generalized
    Gauss-Newton approximation.

    Args:
        model: in eval mode.
        batches: sequence of ``(x, y)``; labels are unused except for validation.
        param_name: the block's parameter.
        cache_graph: keep each batch's VJP closure (its forward graph) and softmax, so a
            product costs one forward-mode pass and one backward instead of adding a forward.
        chunk_size: vectors per ``vmap`` chunk for ``(B, size)`` inputs.

    Attributes: ``size``, ``dtype``, ``device``, ``num_examples``, ``num_matvecs``.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        param_name: str,
        *,
        cache_graph: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(
            model, batches, param_name, cache_graph=cache_graph, chunk_size=chunk_size
        )
        self._cache: dict[int, tuple[Callable, Callable, Tensor]] = {}

    def _linearization(self, index: int, x: Tensor) -> tuple[Callable, Callable, Tensor]:
        if index in self._cache:
            return self._cache[index]
        w0 = self.model.get_parameter(self.param_name).detach()
        fn = _logits_fn(self.model, self.param_name, x)
        z, vjp_fn = torch.func.vjp(fn, w0)

        def jvp_fn(u: Tensor) -> Tensor:
            return torch.func.jvp(fn, (w0,), (u,))[1]

        state = (jvp_fn, vjp_fn, torch.softmax(z.detach(), dim=-1))
        if self.cache_graph:
            self._cache[index] = state
        return state

    def matvec(self, u: Tensor) -> Tensor:
        """G_i u for flat ``(size,)`` u, or row-wise for ``(B, size)``."""
        check_eval_mode(self.model)
        if u.ndim == 1:
            rows = as_flat(u, self.size, dtype=self.dtype, device=self.device, what="u")[None]
        else:
            rows = as_rows(u, self.size, dtype=self.dtype, device=self.device, what="u")
        out = torch.zeros_like(rows)
        scale = 1.0 / self.num_examples
        shape = self.shape
        for index, (x, _) in enumerate(self.batches):
            jvp_fn, vjp_fn, p = self._linearization(index, x)

            def one(r: Tensor, jvp_fn=jvp_fn, vjp_fn=vjp_fn, p=p) -> Tensor:
                ju = jvp_fn(r.reshape(shape))
                a_ju = p * ju - p * (p * ju).sum(dim=-1, keepdim=True)
                return vjp_fn(a_ju * scale)[0].reshape(-1)

            if rows.shape[0] == 1:
                out += one(rows[0])[None].detach()
            else:
                out += torch.func.vmap(one, chunk_size=self.chunk_size)(rows).detach()
        self.num_matvecs += rows.shape[0]
        return out[0] if u.ndim == 1 else out

    __call__ = matvec

    def clear_cache(self) -> None:
        self._cache = {}


def gauss_newton_matvec(
    model: nn.Module, batches: Sequence[Batch], param_name: str, u: Tensor
) -> Tensor:
    """One product G_i u (see :class:`BlockGaussNewton`)."""
    return BlockGaussNewton(model, batches, param_name).matvec(u)


def default_rtol(dtype: torch.dtype) -> float:
    """Default tolerance of :func:`confirm_piecewise_linear` for ``dtype``: 1e-10 in float64,
    1e-4 otherwise. Measured round-off of the comparison on piecewise-linear nets (a small
    ReLU/BatchNorm/max-pool CNN and a timm ResNet-18, several layers): <= 4e-16 in float64 and
    1e-7 to 2.2e-7 in float32, so the margin is about 1e5 and 500x; a smooth activation between
    the block and the logits moves the forms by percents (0.97 on the test suite's tanh CNN).
    """
    return 1e-10 if dtype == torch.float64 else 1e-4


def confirm_piecewise_linear(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    param_name: str,
    v: Tensor,
    *,
    rtol: float | None = None,
) -> tuple[bool, float]:
    """Check the fast path on one batch: Gauss-Newton forms vs exact second derivatives.

    Compares g_n = u_n^T A_n u_n (:func:`per_example_gauss_newton_forms`) with the exact
    h_n = v^T H_{i,n} v (:func:`~hessaudit.hessian.per_example.
    per_example_directional_second_derivative`) and returns ``(agrees, deviation)`` with the
    normwise relative deviation

        deviation = max_n |g_n - h_n| / max_n |h_n|

    (0 when both vanish), which bounds the error of every per-example maximum and mean taken
    from the fast path. ``agrees`` is ``deviation <= rtol``; ``rtol=None`` picks
    :func:`default_rtol` of the parameter's dtype. Non-finite values never agree.
    """
    param = get_parameter(model, param_name)
    tol = default_rtol(param.dtype) if rtol is None else float(rtol)
    gn = per_example_gauss_newton_forms(model, x, y, param_name, v)
    exact = per_example_directional_second_derivative(model, x, y, param_name, v)
    return agreement(gn, exact, tol)


def agreement(gn: Tensor, exact: Tensor, tol: float) -> tuple[bool, float]:
    """``(deviation <= tol, deviation)`` of Gauss-Newton forms ``gn`` from exact forms ``exact``
    (see :func:`confirm_piecewise_linear`)."""
    if not (torch.isfinite(gn).all() and torch.isfinite(exact).all()):
        return False, float("inf")
    scale = float(exact.abs().max())
    diff = float((gn - exact).abs().max())
    # When every exact form is zero, agreement means every fast form is zero too.
    vacuous = 0.0 if diff == 0.0 else float("inf")
    deviation = diff / scale if scale > 0.0 else vacuous
    return deviation <= tol, deviation


__all__ = [
    "BlockGaussNewton",
    "confirm_piecewise_linear",
    "default_rtol",
    "gauss_newton_forms",
    "gauss_newton_matvec",
    "gauss_newton_probe_forms",
    "is_piecewise_linear",
    "logit_jvp",
    "non_piecewise_linear_modules",
    "per_example_gauss_newton_forms",
]

