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
from hessaudit.audit.work import Batches, Work
from hessaudit.hessian import (
    BlockHessian,
    PerExampleBlockHessians,
    QuadratureResult,
    lanczos_quadrature,
)
from hessaudit.hessian.per_example_graph import examples_per_graph
from hessaudit.hessian.version import legacy

# The per-example Lanczos keeps (steps + 2) vectors of the layer's size per example; chunk the
# examples so that this stays below a fixed budget.
LANCZOS_MEMORY_BUDGET_BYTES = 1 << 30
# At most this many examples per chunk: beyond it the per-step cost per example hardly falls
# while the memory grows (the benchmark ViT, 256 examples, whole `measure`, 2 threads: chunks
# of 32 examples 213 s / 1.9 GB peak, 64: 174 s / 2.2 GB, all 256: 164 s / 3.2 GB).
EXAMPLES_PER_CHUNK = 64
# Operators keep their batches' graphs between products (cache_graph=True) up to this many
# examples per rank; above it they rebuild the graph for every product to bound memory.
CACHE_GRAPH_MAX_EXAMPLES = 256


def cache_fits(examples: int) -> bool:
    return examples <= CACHE_GRAPH_MAX_EXAMPLES


class PositiveForms(NamedTuple):
    """The reduced positive-part form and its diagnostics (over every row and rank)."""

    value: float  # the reduced v^T H^+ v
    raw: float  # the reduced v^T H v (exact: from the first Lanczos step of every row)
    steps: int  # most Lanczos steps of any row
    last_change: float  # largest relative change over a row's last step
    converged: bool  # every row's error estimate met its tolerance
    error: float  # estimated relative error of ``value`` (inf: none met; 0: exact)
    matvecs: int  # block Hessian-vector products, summed over rows and ranks


def combine(results: list[QuadratureResult], ctx: Context) -> PositiveForms:
    """Maximum over the rows of ``results`` and over ranks, with the error of that maximum
    (largest absolute row error, relative to the maximum); the same maximum of the raw forms
    (a row is an example, a batch, or the one mean Hessian, so it is the reduced raw form)."""
    if results:
        values = torch.cat([r.positive.reshape(-1) for r in results])
        changes = torch.cat([r.last_change.reshape(-1) for r in results])
        errors = torch.cat([r.error.reshape(-1) for r in results])
        ok = bool(torch.cat([r.converged.reshape(-1) for r in results]).all())
        raws = torch.cat([r.raw.reshape(-1) for r in results])
        local = torch.tensor(
            [float(values.max()), max(r.steps for r in results), float(changes.max()),
             float(errors.max()), float(raws.max())],
            dtype=torch.float64,
        )
        matvecs = sum(r.matvecs for r in results)
    else:
        local = torch.tensor([-math.inf, 0.0, -math.inf, 0.0, -math.inf], dtype=torch.float64)
        ok, matvecs = True, 0
    value, steps, change, error, raw = ctx.max(local).tolist()
    # the error of the maximum, relative to it (0 when exact, inf when there is no estimate)
    relative = error / abs(value) if value != 0 else (0.0 if error == 0 else math.inf)
    return PositiveForms(
        value=value,
        raw=raw,
        steps=int(steps),
        last_change=change,
        converged=ctx.all_true(ok),
        error=relative,
        matvecs=int(ctx.sum_float(float(matvecs))),
    )


def example_chunks(
    model: nn.Module, name: str, flat: torch.Tensor, batches: Batches, steps: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The examples of ``batches`` regrouped for the per-example Lanczos: consecutive batches of
    the same example shape (text batches are padded per batch) are joined, then cut into chunks
    that fit both the Lanczos vectors' budget and the cached graph's
    (:func:`~hessaudit.hessian.per_example_graph.examples_per_graph`).

    The per-example quadratures are independent, so the grouping changes no number beyond
    round-off; larger chunks amortize the per-step work over more examples
    (:data:`EXAMPLES_PER_CHUNK`)."""
    bytes_per_example = flat.numel() * flat.element_size() * (steps + 2)
    chunk = max(1, min(EXAMPLES_PER_CHUNK,
                       LANCZOS_MEMORY_BUDGET_BYTES // max(bytes_per_example, 1)))
    groups: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    for x, y in batches:
        if not groups or groups[-1][0][0].shape[1:] != x.shape[1:]:
            groups.append([])
        groups[-1].append((x, y))
    out = []
    for group in groups:
        x = torch.cat([b[0] for b in group]) if len(group) > 1 else group[0][0]
        y = torch.cat([b[1] for b in group]) if len(group) > 1 else group[0][1]
        graph = None if legacy() else examples_per_graph(model, x, y, name)
        if not graph:  # no graph fits: products are recomputed per batch, keep the batches
            out += [(bx[i : i + chunk], by[i : i + chunk]) for bx, by in group
                    for i in range(0, len(bx), chunk)]
            continue
        size = min(chunk, graph)
        out += [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]
    return out


def positive_forms(
    model: nn.Module,
    name: str,
    v: torch.Tensor,
    work: Work,
    settings: MeasureSettings,
    *,
    raw: float | None = None,
) -> PositiveForms:
    """Reduced v^T H^+ v and v^T H v by Lanczos quadrature.

    The raw forms come from each row's first Lanczos step (exact: ||v||^2 alpha_1). A maximum's
    tolerance and screening need a lower bound of it before the rows iterate: the largest raw
    form of the rows seen so far (``floor_from_raw`` of the quadrature), or ``raw``, the
    reduced raw form when the caller computed it (the engine before issue 16 did, by a
    separate forward-over-forward pass per layer)."""

    flat = v.reshape(-1)
    ctx = work.ctx
    maximum = settings.reduce != "mean"
    # a lower bound of the maximum (raw forms, and 0): rows whose certified upper bound is
    # below it stop after one step (see hessaudit.hessian.quadrature)
    floor = max(raw or 0.0, 0.0) if maximum else 0.0
    own_floor = maximum and raw is None  # raise the floor from the rows' raw forms
    results: list[QuadratureResult] = []

    def quadrature(matvec, start):
        nonlocal floor
        result = lanczos_quadrature(
            matvec, start, max_steps=settings.lanczos_steps, tol=settings.tol,
            atol=settings.tol * floor, screen_below=floor, floor_from_raw=own_floor,
        )
        if own_floor:
            floor = max(floor, float(result.raw.max()))
        results.append(result)

    if settings.reduce == "example-max":
        for xs, ys in example_chunks(model, name, flat, work.local, settings.lanczos_steps):
            operator = PerExampleBlockHessians(model, xs, ys, name)
            quadrature(operator.matvec, flat.unsqueeze(0).expand(len(xs), -1).contiguous())
        return combine(results, ctx)
    if settings.reduce == "batch-max":
        for batch in work.local:
            operator = BlockHessian(model, [batch], name, cache_graph=cache_fits(len(batch[0])))
            quadrature(operator.matvec, flat.unsqueeze(0))
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
    quadrature(operator.matvec, flat.unsqueeze(0))
    return combine(results, ctx)._replace(matvecs=results[0].matvecs)
