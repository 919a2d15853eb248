"""The per-layer Hessian distance measure of Ju, Li & Zhang (ICML 2022).

For every selected layer i with distance vector v_i = vec(W_ft,i - W_pre,i) (or vec(W_ft,i) for a
new head) and the block Hessian H_i of the cross-entropy loss with respect to that layer alone,
evaluated at the fine-tuned weights, this module computes

* ``quad_raw``  = R[ v_i^T H_i v_i ]
* ``quad_pos``  = R[ v_i^T H_i^+ v_i ]      (H^+ keeps the non-negative eigenvalues)
* ``hcal``      = the value the bound uses: ``quad_pos`` (default), ``quad_raw`` or the
  cross-term ``v_i^T (H v)_i`` of the released code, depending on ``form``;
* ``top_eig`` and ``trace`` of the block Hessian of the mean loss over the spectrum examples.

R is the reduction over the audit data:

* ``example-max``: the largest value over examples of the form of that example's own Hessian
  (the theorem's definition);
* ``batch-max``: the largest value over consecutive mini-batches of the form of the batch-mean
  loss's Hessian (the released code's definition);
* ``mean``: the form of the Hessian of the mean loss over all audit examples.

The positive part is always taken of the Hessian being reduced (per example, per batch, or of the
mean). Two engines compute the forms:

* ``jvp`` (exact, for piecewise-linear networks): the per-example block Hessian equals the
  positive semidefinite Gauss-Newton block J^T (diag p - p p^T) J, so both forms equal
  u^T (diag p - p p^T) u with u = J v, one forward-mode pass per layer and batch. Batch and mean
  forms are means of per-example forms, because the Gauss-Newton blocks are PSD and add up.
* ``lanczos`` (any twice-differentiable network): the raw form is the exact second directional
  derivative of the loss along v; the positive part is Gauss quadrature from the start vector v
  on a Lanczos tridiagonalisation (per example, vectorised over examples).

``auto`` uses ``jvp`` when every module of the model is piecewise linear *and* the Gauss-Newton
forms agree with the exact second derivative on the first batch; otherwise ``lanczos``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from hessaudit.data import Dataset
from hessaudit.errors import HessauditError
from hessaudit.layers import Layer

REDUCTIONS = ("example-max", "batch-max", "mean")
FORMS = ("positive", "raw", "cross")
ENGINES = ("auto", "jvp", "lanczos")

# The per-example Lanczos keeps (steps + 2) vectors of the layer's size per example; chunk the
# examples so that this stays below a fixed budget.
_LANCZOS_MEMORY_BUDGET_BYTES = 1 << 30
# Relative agreement required before the Gauss-Newton fast path is trusted.
_CONFIRM_RTOL = 1e-4


@dataclass(frozen=True)
class MeasureSettings:
    """How the measure is computed. Defaults follow the theorem (see the module docstring)."""

    reduce: str = "example-max"
    form: str = "positive"
    engine: str = "auto"
    lanczos_steps: int = 40
    tol: float = 1e-3
    batch_size: int = 32
    spectrum: bool = True
    spectrum_samples: int = 32
    trace_probes: int = 8

    def __post_init__(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise HessauditError(f"--reduce must be one of {', '.join(REDUCTIONS)}")
        if self.form not in FORMS:
            raise HessauditError(f"--form must be one of {', '.join(FORMS)}")
        if self.engine not in ENGINES:
            raise HessauditError(f"--engine must be one of {', '.join(ENGINES)}")
        if self.lanczos_steps < 1:
            raise HessauditError("--lanczos-steps must be at least 1")
        if not self.tol >= 0:
            raise HessauditError("--tol must be non-negative (0: always run --lanczos-steps)")
        if self.batch_size < 1:
            raise HessauditError("--batch-size must be at least 1")
        if self.spectrum_samples < 1:
            raise HessauditError("--spectrum-samples must be at least 1")
        if self.trace_probes < 1:
            raise HessauditError("--trace-probes must be at least 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LayerMeasure:
    """One layer's row of the audit. ``None`` marks a quantity that was not computed."""

    name: str
    numel: int
    is_new_head: bool
    dist_fro: float
    rel_dist: float | None
    quad_raw: float | None
    quad_pos: float | None
    cross: float | None
    hcal: float
    clamped: bool
    top_eig: float | None
    trace: float | None
    trace_stderr: float | None
    converged: bool
    engine_path: str
    quad_steps: int
    quad_last_change: float

    def to_dict(self) -> dict:
        return asdict(self)


# Called after each layer with (layers done, layers in all, the layer's name).
ProgressCallback = Callable[[int, int, str], None]


def check_determinism(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse to estimate anything when two forward passes disagree (dropout, train-mode BN)."""
    with torch.no_grad():
        first = nn.functional.cross_entropy(model(x), y)
        second = nn.functional.cross_entropy(model(x), y)
    if not torch.equal(first, second):
        raise HessauditError(
            "the model is not deterministic: two forward passes gave different losses "
            f"({first.item():.6g} vs {second.item():.6g})",
            hint="put the model in eval mode and disable dropout or other randomness",
        )


def choose_engine_path(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: Layer, requested: str
) -> str:
    """Return ``"jvp"`` or ``"lanczos"`` for one layer, as described in the module docstring."""
    from hessaudit.hessian import confirm_piecewise_linear, is_piecewise_linear

    if requested == "lanczos":
        return "lanczos"
    if requested == "jvp":
        return "jvp"
    if not is_piecewise_linear(model):
        return "lanczos"
    v = _delta_like(model, layer)
    agrees, _ = confirm_piecewise_linear(model, x, y, layer.name, v, rtol=_CONFIRM_RTOL)
    return "jvp" if agrees else "lanczos"


def measure_layers(
    model: nn.Module,
    layers: Sequence[Layer],
    data: Dataset,
    settings: MeasureSettings,
    *,
    generator: torch.Generator,
    progress: ProgressCallback | None = None,
) -> list[LayerMeasure]:
    """Compute the per-layer measure of ``layers`` over the audit examples ``data``.

    ``model`` holds the fine-tuned weights and must be in eval mode; ``data`` are the audit
    examples, already on the model's device and dtype. ``generator`` drives every random probe.
    """
    if model.training:
        raise HessauditError("internal: the model must be in eval mode for an audit")
    batches = list(data.batches(settings.batch_size))
    if not batches:
        raise HessauditError("the audit data is empty")
    check_determinism(model, *batches[0])
    params = dict(model.named_parameters())
    missing = [layer.name for layer in layers if layer.name not in params]
    if missing:
        raise HessauditError(
            f"layer {missing[0]!r} is not a parameter of the model",
            hint="check that --model matches the checkpoints",
        )

    cross_values: dict[str, float] = {}
    if settings.form == "cross":
        cross_values = _cross_forms(model, layers, batches, settings.reduce)

    spectrum_batches = list(
        data.subset(range(min(settings.spectrum_samples, len(data)))).batches(settings.batch_size)
    )
    results = []
    for index, layer in enumerate(layers):
        results.append(
            _measure_one(model, layer, batches, spectrum_batches, settings, generator, cross_values)
        )
        if progress is not None:
            progress(index + 1, len(layers), layer.name)
    return results


def _measure_one(
    model: nn.Module,
    layer: Layer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    spectrum_batches: list[tuple[torch.Tensor, torch.Tensor]],
    settings: MeasureSettings,
    generator: torch.Generator,
    cross_values: dict[str, float],
) -> LayerMeasure:
    v = _delta_like(model, layer)
    path = choose_engine_path(model, *batches[0], layer, settings.engine)
    zero = not bool(torch.any(v != 0))

    quad_raw: float | None
    quad_pos: float | None
    steps, last_change, converged = 0, 0.0, True
    if zero:
        quad_raw = quad_pos = 0.0
    elif path == "jvp":
        quad_raw = quad_pos = _reduce_per_example(
            [_gauss_newton_forms(model, x, y, layer.name, v) for x, y in batches], settings.reduce
        )
    else:
        quad_raw = _reduce_per_example(
            [_second_derivatives(model, x, y, layer.name, v) for x, y in batches], settings.reduce
        )
        if settings.form == "positive":
            quad_pos, steps, last_change, converged = _positive_forms(
                model, layer.name, v, batches, settings
            )
        else:
            quad_pos = None

    cross = cross_values.get(layer.name)
    if settings.form == "positive":
        value = quad_pos
    elif settings.form == "raw":
        value = quad_raw
    else:
        value = cross
    assert value is not None
    clamped = value < 0
    hcal = max(value, 0.0)

    top_eig = trace = trace_stderr = None
    if settings.spectrum:
        top_eig, trace, trace_stderr, spectrum_converged = _spectrum(
            model, layer.name, spectrum_batches, path, settings, generator
        )
        converged = converged and spectrum_converged

    return LayerMeasure(
        name=layer.name,
        numel=layer.numel,
        is_new_head=layer.is_new_head,
        dist_fro=float(layer.dist_fro),
        rel_dist=None if layer.rel_dist is None else float(layer.rel_dist),
        quad_raw=quad_raw,
        quad_pos=quad_pos,
        cross=cross,
        hcal=hcal,
        clamped=clamped,
        top_eig=top_eig,
        trace=trace,
        trace_stderr=trace_stderr,
        converged=bool(converged),
        engine_path=path,
        quad_steps=steps,
        quad_last_change=last_change,
    )


def _delta_like(model: nn.Module, layer: Layer) -> torch.Tensor:
    param = dict(model.named_parameters())[layer.name]
    return layer.delta.to(device=param.device, dtype=param.dtype).reshape(param.shape)


def _gauss_newton_forms(model, x, y, name, v) -> torch.Tensor:
    from hessaudit.hessian import per_example_gauss_newton_forms

    return per_example_gauss_newton_forms(model, x, y, name, v)


def _second_derivatives(model, x, y, name, v) -> torch.Tensor:
    from hessaudit.hessian import per_example_directional_second_derivative

    return per_example_directional_second_derivative(model, x, y, name, v)


def _reduce_per_example(per_batch: list[torch.Tensor], reduce: str) -> float:
    """Reduce per-example forms that are linear in the Hessian (raw forms, PSD Gauss-Newton).

    For such forms the batch-mean Hessian's form is the mean of the per-example forms, so all
    three reductions follow from the per-example values.
    """
    if reduce == "example-max":
        return float(max(values.max() for values in per_batch))
    if reduce == "batch-max":
        return float(max(values.mean() for values in per_batch))
    total = sum(float(values.sum()) for values in per_batch)
    return total / sum(len(values) for values in per_batch)


def _positive_forms(
    model: nn.Module,
    name: str,
    v: torch.Tensor,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    settings: MeasureSettings,
) -> tuple[float, int, float, bool]:
    """Reduced v^T H^+ v by Lanczos quadrature; returns (value, steps, last change, converged)."""
    from hessaudit.hessian import BlockHessian, PerExampleBlockHessians, lanczos_quadrature

    flat = v.reshape(-1)
    results = []
    if settings.reduce == "example-max":
        bytes_per_example = flat.numel() * flat.element_size() * (settings.lanczos_steps + 2)
        chunk = max(1, _LANCZOS_MEMORY_BUDGET_BYTES // max(bytes_per_example, 1))
        for x, y in batches:
            for start in range(0, len(x), chunk):
                xs, ys = x[start : start + chunk], y[start : start + chunk]
                operator = PerExampleBlockHessians(model, xs, ys, name)
                start_vectors = flat.unsqueeze(0).expand(len(xs), -1).contiguous()
                results.append(
                    lanczos_quadrature(
                        operator.matvec,
                        start_vectors,
                        max_steps=settings.lanczos_steps,
                        tol=settings.tol,
                    )
                )
        values = torch.cat([r.positive.reshape(-1) for r in results])
        changes = torch.cat([r.last_change.reshape(-1) for r in results])
        converged = torch.cat([r.converged.reshape(-1) for r in results])
        best = int(torch.argmax(values))
        return (
            float(values[best]),
            max(r.steps for r in results),
            float(changes.max()),
            bool(converged.all()),
        )
    groups = [[batch] for batch in batches] if settings.reduce == "batch-max" else [batches]
    for group in groups:
        operator = BlockHessian(model, group, name)
        results.append(
            lanczos_quadrature(
                operator.matvec,
                flat.unsqueeze(0),
                max_steps=settings.lanczos_steps,
                tol=settings.tol,
            )
        )
    values = torch.cat([r.positive.reshape(-1) for r in results])
    changes = torch.cat([r.last_change.reshape(-1) for r in results])
    converged = torch.cat([r.converged.reshape(-1) for r in results])
    return (
        float(values.max()),
        max(r.steps for r in results),
        float(changes.max()),
        bool(converged.all()),
    )


def _spectrum(
    model: nn.Module,
    name: str,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    path: str,
    settings: MeasureSettings,
    generator: torch.Generator,
) -> tuple[float, float, float, bool]:
    """Top eigenvalue and Hutchinson trace of the mean-loss block Hessian over ``batches``."""
    from hessaudit.hessian import (
        BlockGaussNewton,
        BlockHessian,
        hutchinson_trace,
        lanczos_top_eigenvalue,
    )

    operator = (
        BlockGaussNewton(model, batches, name)
        if path == "jvp"
        else BlockHessian(model, batches, name)
    )
    eig = lanczos_top_eigenvalue(
        operator.matvec,
        operator.size,
        generator=generator,
        max_steps=settings.lanczos_steps,
        tol=settings.tol,
        dtype=operator.dtype,
        device=operator.device,
    )
    trace = hutchinson_trace(
        operator.matvec,
        operator.size,
        probes=settings.trace_probes,
        generator=generator,
        dtype=operator.dtype,
        device=operator.device,
    )
    return float(eig.value), float(trace.value), float(trace.stderr), bool(eig.converged)


def _cross_forms(
    model: nn.Module,
    layers: Sequence[Layer],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    reduce: str,
) -> dict[str, float]:
    """The released code's per-layer v_i^T (H v)_i from full HVPs along all layers at once."""
    from hessaudit.hessian import cross_term_forms

    vectors = {layer.name: _delta_like(model, layer) for layer in layers}
    if reduce == "mean":
        return cross_term_forms(model, batches, vectors)
    if reduce == "batch-max":
        groups = [[batch] for batch in batches]
    else:
        groups = [[(x[i : i + 1], y[i : i + 1])] for x, y in batches for i in range(len(x))]
    best = {name: -math.inf for name in vectors}
    for group in groups:
        for name, value in cross_term_forms(model, group, vectors).items():
            best[name] = max(best[name], value)
    return best
