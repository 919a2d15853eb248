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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from hessaudit.audit._positive_forms import PositiveForms, cache_fits, positive_forms
from hessaudit.audit.distributed import SINGLE, Context, ShardedOperator
from hessaudit.audit.engine_choice import check_determinism, choose_engine_path
from hessaudit.audit.forms import cross_forms, reduce_per_example
from hessaudit.audit.layers import Layer, distance_vector
from hessaudit.audit.settings import ENGINES, FORMS, REDUCTIONS, MeasureSettings
from hessaudit.audit.work import Work, plan_work
from hessaudit.errors import HessauditError
from hessaudit.hessian import (
    BlockHessian,
    LayerwiseGaussNewton,
    hutchinson_trace,
    is_piecewise_linear,
    lanczos_top_eigenvalue,
    per_example_directional_second_derivative,
    random_rademacher,
    trace_from_samples,
)
from hessaudit.hessian.version import legacy
from hessaudit.inputs.data import Dataset

__all__ = [
    "ENGINES",
    "FORMS",
    "REDUCTIONS",
    "LayerMeasure",
    "MeasureSettings",
    "ProgressCallback",
    "check_determinism",
    "choose_engine_path",
    "measure_layers",
]

# Hutchinson probes vectorized together on the JVP path.
_PROBE_CHUNK = 8


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
    # estimated relative error of quad_pos (0: exact; None: no quadrature ran or no estimate
    # yet) and the block Hessian-vector products the quadrature took
    quad_error: float | None = None
    quad_hvps: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# Called after each layer with (layers done, layers in all, the layer's name).
ProgressCallback = Callable[[int, int, str], None]


def measure_layers(
    model: nn.Module,
    layers: Sequence[Layer],
    data: Dataset,
    settings: MeasureSettings,
    *,
    generator: torch.Generator,
    progress: ProgressCallback | None = None,
    dist: Context | None = None,
) -> list[LayerMeasure]:
    """Compute the per-layer measure of ``layers`` over the audit examples ``data``.

    ``model`` holds the fine-tuned weights and must be in eval mode; ``data`` are the audit
    examples, already on the model's device and dtype. ``generator`` drives every random probe.
    ``dist`` (a :class:`~.distributed.Context`) shards the examples over the ranks of a
    torchrun job and all-reduces the results, so every rank returns what one process would.
    """

    ctx = dist or SINGLE
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

    work = plan_work(
        data, batches, batch_size=settings.batch_size,
        spectrum_samples=settings.spectrum_samples, ctx=ctx,
    )
    cross_values: dict[str, float] = {}
    if settings.form == "cross":
        vectors = {layer.name: distance_vector(model, layer) for layer in layers}
        cross_values = cross_forms(model, vectors, work, settings.reduce)

    piecewise = settings.engine == "auto" and is_piecewise_linear(model)
    if settings.engine == "jvp" or piecewise:
        work.gn = LayerwiseGaussNewton(
            model, {layer.name: distance_vector(model, layer) for layer in layers}
        )
    results = []
    for index, layer in enumerate(layers):
        results.append(
            _measure_one(model, layer, work, settings, generator, cross_values, piecewise)
        )
        if progress is not None:
            progress(index + 1, len(layers), layer.name)
    _warn_not_converged(results, settings, ctx)
    return results


def _warn_not_converged(results: list[LayerMeasure], settings: MeasureSettings,
                        ctx: Context) -> None:
    """One warning line naming the layers whose estimates did not meet --tol (their JSON rows
    say ``converged: false``), so that a CI log shows it even with --json or --quiet."""
    stuck = [r.name for r in results if not r.converged]
    if not stuck or not ctx.is_main:
        return
    shown = ", ".join(repr(name) for name in stuck[:5])
    more = f" and {len(stuck) - 5} more" if len(stuck) > 5 else ""
    warnings.warn(
        f"{len(stuck)} of {len(results)} layers did not converge within --lanczos-steps "
        f"{settings.lanczos_steps} at --tol {settings.tol:g}: {shown}{more}; their values may "
        "be off by more than the tolerance (converged: false in the JSON); raise "
        "--lanczos-steps",
        UserWarning,
        stacklevel=3,
    )


class _Forms(NamedTuple):
    """A layer's reduced raw and positive-part forms (None: not computed) and how the
    positive part's quadrature went (the defaults: exact, no quadrature)."""

    raw: float | None
    positive: float | None
    steps: int = 0
    last_change: float = 0.0
    converged: bool = True
    error: float | None = 0.0  # estimated relative error of ``positive``; None: no estimate
    hvps: int = 0  # block Hessian-vector products of the quadrature


def _quadratic_forms(
    model: nn.Module,
    layer: Layer,
    v: torch.Tensor,
    path: str,
    work: Work,
    settings: MeasureSettings,
) -> _Forms:
    """R[v^T H v] and R[v^T H^+ v] of one layer along its distance vector ``v``."""
    if not bool(torch.any(v != 0)):
        return _Forms(0.0, 0.0)
    ctx = work.ctx
    if path == "jvp":  # Gauss-Newton forms: PSD, so the raw form is the positive part
        gn = work.gn or LayerwiseGaussNewton(model, {})
        value = reduce_per_example(
            [gn.forms(x, y, layer.name, v) for x, y in work.local],
            settings.reduce,
            ctx,
        )
        return _Forms(value, value)
    if settings.form == "positive" and not legacy():  # the quadrature gives both forms
        forms = positive_forms(model, layer.name, v, work, settings)
        return _lanczos_forms(forms)
    raw = reduce_per_example(
        [
            per_example_directional_second_derivative(model, x, y, layer.name, v)
            for x, y in work.local
        ],
        settings.reduce,
        ctx,
    )
    if settings.form != "positive":
        return _Forms(raw, None, error=None)
    forms = positive_forms(model, layer.name, v, work, settings, raw=raw)
    return _lanczos_forms(forms._replace(raw=raw))


def _lanczos_forms(forms: PositiveForms) -> _Forms:
    return _Forms(
        forms.raw,
        forms.value,
        steps=forms.steps,
        last_change=forms.last_change,
        converged=forms.converged,
        error=forms.error if math.isfinite(forms.error) else None,
        hvps=forms.matvecs,
    )


def _measure_one(
    model: nn.Module,
    layer: Layer,
    work: Work,
    settings: MeasureSettings,
    generator: torch.Generator,
    cross_values: dict[str, float],
    piecewise: bool,
) -> LayerMeasure:
    v = distance_vector(model, layer)
    path = choose_engine_path(
        model, *work.batches[0], layer, settings.engine, piecewise=piecewise,
        confirm=work.gn.confirm if work.gn else None,
    )
    forms = _quadratic_forms(model, layer, v, path, work, settings)
    cross = cross_values.get(layer.name)
    value = {"positive": forms.positive, "raw": forms.raw, "cross": cross}[settings.form]
    assert value is not None

    converged = forms.converged
    top_eig = trace = trace_stderr = None
    if settings.spectrum:
        top_eig, trace, trace_stderr, spectrum_converged = _spectrum(
            model, layer.name, work, path, settings, generator
        )
        converged = converged and spectrum_converged

    return LayerMeasure(
        name=layer.name,
        numel=layer.numel,
        is_new_head=layer.is_new_head,
        dist_fro=float(layer.dist_fro),
        rel_dist=None if layer.rel_dist is None else float(layer.rel_dist),
        quad_raw=forms.raw,
        quad_pos=forms.positive,
        cross=cross,
        hcal=max(value, 0.0),
        clamped=value < 0,
        top_eig=top_eig,
        trace=trace,
        trace_stderr=trace_stderr,
        converged=bool(converged),
        engine_path=path,
        quad_steps=forms.steps,
        quad_last_change=forms.last_change,
        quad_error=forms.error,
        quad_hvps=forms.hvps,
    )


def _spectrum(
    model: nn.Module,
    name: str,
    work: Work,
    path: str,
    settings: MeasureSettings,
    generator: torch.Generator,
) -> tuple[float, float, float, bool]:
    """Top eigenvalue and Hutchinson trace of the mean-loss block Hessian over the spectrum
    examples.

    Both run on an operator that keeps each batch's graph between products
    (``cache_graph=True``). On the ``jvp`` path the block equals the Gauss-Newton block, whose
    Hutchinson samples z^T G z = mean_n gn_form(J_n z) need only JVPs, vectorized over probes;
    the probes are drawn exactly as :func:`~hessaudit.hessian.hutchinson_trace` draws them.
    """
    ctx = work.ctx
    param = dict(model.named_parameters())[name]
    size, dtype, device = param.numel(), param.dtype, param.device
    local = None
    gn = work.gn or LayerwiseGaussNewton(model, {})
    if work.spectrum_local:
        cache = cache_fits(work.spectrum_local_n)
        local = (
            gn.block(work.spectrum_local, name, cache_graph=cache)
            if path == "jvp"
            else BlockHessian(model, work.spectrum_local, name, cache_graph=cache)
        )
    operator = ShardedOperator(
        local, work.spectrum_local_n, work.spectrum_n, size=size, dtype=dtype, device=device,
        ctx=ctx,
    )
    eig = lanczos_top_eigenvalue(
        operator.matvec,
        size,
        generator=generator,
        max_steps=settings.lanczos_steps,
        tol=settings.tol,
        dtype=dtype,
        device=device,
    )
    if path == "jvp":
        if local is not None:
            local.clear_cache()
        probes = random_rademacher(
            (settings.trace_probes, size), generator=generator, dtype=dtype, device=device
        )
        sums = torch.zeros(settings.trace_probes, dtype=torch.float64, device=device)
        for x, _ in work.spectrum_local:
            forms = gn.probe_forms(x, name, probes, chunk_size=_PROBE_CHUNK)
            sums += forms.double().sum(dim=1)
        samples = ctx.sum(sums) / work.spectrum_n
        trace = trace_from_samples(samples)
    else:
        trace = hutchinson_trace(
            operator.matvec,
            size,
            probes=settings.trace_probes,
            generator=generator,
            dtype=dtype,
            device=device,
        )
    if local is not None:
        local.clear_cache()
    return float(eig.value), float(trace.value), float(trace.stderr), bool(eig.converged)
