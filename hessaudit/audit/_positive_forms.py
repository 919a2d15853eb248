"""The reduced positive-part form R[v^T H^+ v] on the Lanczos path (smooth networks).

One Lanczos quadrature per Hessian being reduced (:mod:`hessaudit.hessian.quadrature`): per
example (vectorized over the examples of a chunk), per mini-batch, or one for the mean loss.
Every quadrature stops only when its error estimate is within tolerance, breakdown, or
``--lanczos-steps``; see docs/measure.md, "Stopping rule of the positive-part quadrature".

Tolerance of a maximum. ``example-max`` and ``batch-max`` report max_r P_r over rows r (examples
or batches). If every row's estimate is within ``err_r`` of its value, the maximum of the
estimates is within max_r err_r of the true maximum, so a row only needs
``err_r <= tol * max_r P_r``, not ``tol * P_r``. The raw forms are exact and
``P_r >= max(raw_r, 0)`` (H^+ >= H and H^+ >= 0), so ``tol * max(reduced raw form, 0)`` is a
lower bound of that threshold, known before any Lanczos step: it is passed as ``atol``. Rows
whose positive part is far below the maximum then stop early without changing the result.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from hessaudit.audit.distributed import Context, ShardedOperator
from hessaudit.audit.settings import MeasureSettings
from hessaudit.audit.work import Work
from hessaudit.hessian import (
    BlockHessian,
    PerExampleBlockHessians,
    QuadratureResult,
    lanczos_quadrature,
)

# The per-example Lanczos keeps (steps + 2) vectors of the layer's size per example; chunk the
# examples so that this stays below a fixed budget.
LANCZOS_MEMORY_BUDGET_BYTES = 1 << 30
# Operators keep their batches' graphs between products (cache_graph=True) up to this many
# examples per rank; above it they rebuild the graph for every product to bound memory.
CACHE_GRAPH_MAX_EXAMPLES = 256


def cache_fits(examples: int) -> bool:
    return examples <= CACHE_GRAPH_MAX_EXAMPLES


class PositiveForms(NamedTuple):
    """The reduced positive-part form and its diagnostics (over every row and rank)."""

    value: float  # the reduced v^T H^+ v
    steps: int  # most Lanczos steps of any row
    last_change: float  # largest relative change over a row's last step
    converged: bool  # every row's error estimate met its tolerance
    error: float  # estimated relative error of ``value`` (inf: none met; 0: exact)
    matvecs: int  # block Hessian-vector products, summed over rows and ranks


def combine(results: list[QuadratureResult], ctx: Context) -> PositiveForms:
    """Maximum over the rows of ``results`` and over ranks, with the error of that maximum
    (largest absolute row error, relative to the maximum)."""
    if results:
        values = torch.cat([r.positive.reshape(-1) for r in results])
        changes = torch.cat([r.last_change.reshape(-1) for r in results])
        errors = torch.cat([r.error.reshape(-1) for r in results])
        ok = bool(torch.cat([r.converged.reshape(-1) for r in results]).all())
        local = torch.tensor(
            [float(values.max()), max(r.steps for r in results), float(changes.max()),
             float(errors.max())],
            dtype=torch.float64,
        )
        matvecs = sum(r.matvecs for r in results)
    else:
        local = torch.tensor([-math.inf, 0.0, -math.inf, 0.0], dtype=torch.float64)
        ok, matvecs = True, 0
    value, steps, change, error = ctx.max(local).tolist()
    # the error of the maximum, relative to it (0 when exact, inf when there is no estimate)
    relative = error / abs(value) if value != 0 else (0.0 if error == 0 else math.inf)
    return PositiveForms(
        value=value,
        steps=int(steps),
        last_change=change,
        converged=ctx.all_true(ok),
        error=relative,
        matvecs=int(ctx.sum_float(float(matvecs))),
    )


def positive_forms(
    model: nn.Module,
    name: str,
    v: torch.Tensor,
    work: Work,
    settings: MeasureSettings,
    *,
    raw: float,
) -> PositiveForms:
    """Reduced v^T H^+ v by Lanczos quadrature, given the (exact) reduced raw form ``raw``."""

    flat = v.reshape(-1)
    ctx = work.ctx
    # a lower bound of the maximum (the exact raw form, and 0): rows whose certified upper
    # bound is below it stop after one step (see hessaudit.hessian.quadrature)
    floor = max(raw, 0.0) if settings.reduce != "mean" else 0.0
    atol = settings.tol * floor
    results = []

    def quadrature(matvec, start):
        return lanczos_quadrature(
            matvec, start, max_steps=settings.lanczos_steps, tol=settings.tol, atol=atol,
            screen_below=floor,
        )

    if settings.reduce == "example-max":
        bytes_per_example = flat.numel() * flat.element_size() * (settings.lanczos_steps + 2)
        chunk = max(1, LANCZOS_MEMORY_BUDGET_BYTES // max(bytes_per_example, 1))
        for x, y in work.local:
            for start in range(0, len(x), chunk):
                xs, ys = x[start : start + chunk], y[start : start + chunk]
                operator = PerExampleBlockHessians(model, xs, ys, name)
                start_vectors = flat.unsqueeze(0).expand(len(xs), -1).contiguous()
                results.append(quadrature(operator.matvec, start_vectors))
        return combine(results, ctx)
    if settings.reduce == "batch-max":
        for batch in work.local:
            operator = BlockHessian(model, [batch], name, cache_graph=cache_fits(len(batch[0])))
            results.append(quadrature(operator.matvec, flat.unsqueeze(0)))
            operator.clear_cache()
        return combine(results, ctx)
    # mean: one operator over every rank's examples; products are all-reduced, so every rank
    # runs the same iteration (and counts the same products: count them once).
    local_n = sum(len(x) for x, _ in work.local)
    total = sum(len(x) for x, _ in work.batches)
    local = (
        BlockHessian(model, work.local, name, cache_graph=cache_fits(local_n))
        if work.local
        else None
    )
    operator = ShardedOperator(
        local, local_n, total, size=flat.numel(), dtype=flat.dtype, device=flat.device, ctx=ctx
    )
    result = quadrature(operator.matvec, flat.unsqueeze(0))
    return combine([result], ctx)._replace(matvecs=result.matvecs)
