"""The reduced forms that are linear in the Hessian: raw forms, Gauss-Newton forms, cross terms.

For a form q(H) linear in H, the batch-mean loss's form is the mean of the per-example forms,
so every reduction R of :mod:`hessaudit.audit.measure` follows from per-example values:

* ``example-max``: max_n q(H_n);
* ``batch-max``: max_b mean_{n in b} q(H_n);
* ``mean``: mean_n q(H_n).

The positive part is not linear; it has its own module (:mod:`hessaudit.audit._positive_forms`).
Across the ranks of a torchrun job: MAX of the maxima, SUM of sums and counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from hessaudit.audit.distributed import SINGLE, Context
from hessaudit.audit.work import Work
from hessaudit.hessian import cross_term_forms

__all__ = ["cross_forms", "reduce_per_example"]


def reduce_per_example(
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


def cross_forms(
    model: nn.Module,
    vectors: Mapping[str, torch.Tensor],
    work: Work,
    reduce: str,
) -> dict[str, float]:
    """The released code's per-layer v_i^T (H v)_i from full HVPs along all layers at once.

    ``vectors`` maps each measured layer to its distance vector v_i (v is their concatenation).
    """
    ctx = work.ctx
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
