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

import torch
from torch import nn

from hessaudit.audit._positive_forms import cache_fits as _cache_fits
from hessaudit.audit._positive_forms import positive_forms
from hessaudit.audit.distributed import SINGLE, Context, ShardedOperator
from hessaudit.audit.layers import Layer
from hessaudit.errors import HessauditError
from hessaudit.hessian import (
    BlockHessian,
    LayerwiseGaussNewton,
    confirm_piecewise_linear,
    cross_term_forms,
    hutchinson_trace,
    is_piecewise_linear,
    lanczos_top_eigenvalue,
    per_example_directional_second_derivative,
    trace_from_samples,
)
from hessaudit.inputs.data import Dataset

REDUCTIONS = ("example-max", "batch-max", "mean")
FORMS = ("positive", "raw", "cross")
ENGINES = ("auto", "jvp", "lanczos")

# Relative agreement required before the Gauss-Newton fast path is trusted.
_CONFIRM_RTOL = 1e-4
# Examples of the first batch on which that agreement is checked, per layer.
_CONFIRM_EXAMPLES = 8
# Hutchinson probes vectorized together on the JVP path.
_PROBE_CHUNK = 8


@dataclass(frozen=True)
class MeasureSettings:
    """How the measure is computed. Defaults follow the theorem (see the module docstring)."""

    reduce: str = "example-max"
    form: str = "positive"
    engine: str = "auto"
    # 100: see docs/measure.md, "Stopping rule of the positive-part quadrature"
    lanczos_steps: int = 100
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
    # estimated relative error of quad_pos (0: exact; None: no quadrature ran or no estimate
    # yet) and the block Hessian-vector products the quadrature took
    quad_error: float | None = None
    quad_hvps: int = 0

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
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layer: Layer,
    requested: str,
    *,
    piecewise: bool | None = None,
    confirm: Callable[..., tuple[bool, float]] | None = None,
) -> str:
    """Return ``"jvp"`` or ``"lanczos"`` for one layer, as described in the module docstring.

    The numerical confirmation uses the first :data:`_CONFIRM_EXAMPLES` examples of ``x``
    (a smooth operation downstream of the layer moves every example's form, so a few suffice).
    ``piecewise`` passes a precomputed :func:`~hessaudit.hessian.is_piecewise_linear`;
    ``confirm`` replaces :func:`~hessaudit.hessian.confirm_piecewise_linear` (without its model
    argument), e.g. by :meth:`~hessaudit.hessian.LayerwiseGaussNewton.confirm`.
    """

    if requested == "lanczos":
        return "lanczos"
    if requested == "jvp":
        return "jvp"
    if piecewise is None:
        piecewise = is_piecewise_linear(model)
    if not piecewise:
        return "lanczos"
    v = _delta_like(model, layer)
    if not bool(torch.any(v != 0)):
        return "jvp"
    xs, ys = x[:_CONFIRM_EXAMPLES], y[:_CONFIRM_EXAMPLES]
    check = confirm or (lambda *a, **k: confirm_piecewise_linear(model, *a, **k))
    agrees, _ = check(xs, ys, layer.name, v, rtol=_CONFIRM_RTOL)
    return "jvp" if agrees else "lanczos"


Batches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Work:
    """What one rank computes: its audit batches and its share of the spectrum examples."""

    batches: Batches  # all audit batches (every rank sees the first one for checks)
    local: Batches  # this rank's batches (round-robin), for the per-example forms
    spectrum_local: Batches  # this rank's contiguous share of the spectrum examples
    spectrum_local_n: int
    spectrum_n: int
    ctx: Context
    # the JVP path's forms and spectrum operators, shared by all layers (None: no layer can
    # take that path)
    gn: LayerwiseGaussNewton | None = None


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

    spectrum_n = min(settings.spectrum_samples, len(data))
    share = ctx.split(spectrum_n)
    work = _Work(
        batches=batches,
        local=[batches[i] for i in ctx.shard(len(batches))],
        spectrum_local=list(data.subset(share).batches(settings.batch_size)) if len(share) else [],
        spectrum_local_n=len(share),
        spectrum_n=spectrum_n,
        ctx=ctx,
    )
    cross_values: dict[str, float] = {}
    if settings.form == "cross":
        cross_values = _cross_forms(model, layers, work, settings.reduce)

    piecewise = settings.engine == "auto" and is_piecewise_linear(model)
    if settings.engine == "jvp" or piecewise:
        work.gn = LayerwiseGaussNewton(model, {la.name: _delta_like(model, la) for la in layers})
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


def _measure_one(
    model: nn.Module,
    layer: Layer,
    work: _Work,
    settings: MeasureSettings,
    generator: torch.Generator,
    cross_values: dict[str, float],
    piecewise: bool,
) -> LayerMeasure:
    v = _delta_like(model, layer)
    path = choose_engine_path(
        model, *work.batches[0], layer, settings.engine, piecewise=piecewise,
        confirm=work.gn.confirm if work.gn else None,
    )
    zero = not bool(torch.any(v != 0))
    ctx = work.ctx

    quad_raw: float | None
    quad_pos: float | None
    steps, last_change, converged = 0, 0.0, True
    quad_error: float | None = 0.0  # the JVP path and v = 0 are exact
    hvps = 0
    if zero:
        quad_raw = quad_pos = 0.0
    elif path == "jvp":
        gn = work.gn or LayerwiseGaussNewton(model, {})
        quad_raw = quad_pos = _reduce_per_example(
            [gn.forms(x, y, layer.name, v) for x, y in work.local],
            settings.reduce,
            ctx,
        )
    else:
        quad_raw = _reduce_per_example(
            [
                per_example_directional_second_derivative(model, x, y, layer.name, v)
                for x, y in work.local
            ],
            settings.reduce,
            ctx,
        )
        if settings.form == "positive":
            forms = positive_forms(model, layer.name, v, work, settings, raw=quad_raw)
            quad_pos, steps, last_change, converged = (
                forms.value, forms.steps, forms.last_change, forms.converged
            )
            quad_error = forms.error if math.isfinite(forms.error) else None
            hvps = forms.matvecs
        else:
            quad_pos = quad_error = None

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
            model, layer.name, work, path, settings, generator
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
        quad_error=quad_error,
        quad_hvps=hvps,
    )


def _delta_like(model: nn.Module, layer: Layer) -> torch.Tensor:
    """v = W_ft - W_pre in the audit's dtype and device: both tensors are cast first, then
    subtracted (a float32 difference cast to float64 would be ~1e-8 off)."""
    param = dict(model.named_parameters())[layer.name]
    return layer.delta_as(dtype=param.dtype, device=param.device).reshape(param.shape)


def _reduce_per_example(
    per_batch: list[torch.Tensor], reduce: str, ctx: Context = SINGLE
) -> float:
    """Reduce per-example forms that are linear in the Hessian (raw forms, PSD Gauss-Newton).

    For such forms the batch-mean Hessian's form is the mean of the per-example forms, so all
    three reductions follow from the per-example values. Across ranks: MAX of the maxima, SUM
    of sums and counts.
    """
    if reduce == "example-max":
        return ctx.max_float(max((float(v.max()) for v in per_batch), default=-math.inf))
    if reduce == "batch-max":
        return ctx.max_float(max((float(v.mean()) for v in per_batch), default=-math.inf))
    totals = torch.tensor(
        [sum(float(v.double().sum()) for v in per_batch), sum(len(v) for v in per_batch)],
        dtype=torch.float64,
    )
    total, count = ctx.sum(totals).tolist()
    return total / count


def _spectrum(
    model: nn.Module,
    name: str,
    work: _Work,
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
    from hessaudit.hessian._util import random_rademacher

    ctx = work.ctx
    param = dict(model.named_parameters())[name]
    size, dtype, device = param.numel(), param.dtype, param.device
    local = None
    gn = work.gn or LayerwiseGaussNewton(model, {})
    if work.spectrum_local:
        cache = _cache_fits(work.spectrum_local_n)
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


def _cross_forms(
    model: nn.Module,
    layers: Sequence[Layer],
    work: _Work,
    reduce: str,
) -> dict[str, float]:
    """The released code's per-layer v_i^T (H v)_i from full HVPs along all layers at once."""

    ctx = work.ctx
    vectors = {layer.name: _delta_like(model, layer) for layer in layers}
    names = list(vectors)
    if reduce == "mean":
        local_n = sum(len(x) for x, _ in work.local)
        total = sum(len(x) for x, _ in work.batches)
        local = dict.fromkeys(names, 0.0)
        if work.local:
            local = cross_term_forms(model, work.local, vectors)
        weighted = torch.tensor([local[n] * local_n / total for n in names], dtype=torch.float64)
        return dict(zip(names, ctx.sum(weighted).tolist(), strict=True))
    if reduce == "batch-max":
        groups = [[batch] for batch in work.local]
    else:
        groups = [[(x[i : i + 1], y[i : i + 1])] for x, y in work.local for i in range(len(x))]
    best = dict.fromkeys(names, -math.inf)
    for group in groups:
        for name, value in cross_term_forms(model, group, vectors).items():
            best[name] = max(best[name], value)
    reduced = ctx.max(torch.tensor([best[n] for n in names], dtype=torch.float64))
    return dict(zip(names, reduced.tolist(), strict=True))
