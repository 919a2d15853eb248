"""What one process computes of an audit: its audit batches and its share of the spectrum
examples (one process, or one rank of a torchrun job: :mod:`hessaudit.audit.distributed`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hessaudit.audit.distributed import Context
from hessaudit.hessian import LayerwiseGaussNewton
from hessaudit.inputs.data import Dataset

__all__ = ["Batches", "Work", "plan_work"]

Batches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Work:
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


def plan_work(
    data: Dataset, batches: Batches, *, batch_size: int, spectrum_samples: int, ctx: Context
) -> Work:
    """Share ``batches`` (``data`` cut into ``batch_size`` batches) over the ranks of ``ctx``:
    round-robin for the per-example forms, and the first ``spectrum_samples`` examples in
    contiguous shares for the spectrum."""
    spectrum_n = min(spectrum_samples, len(data))
    share = ctx.split(spectrum_n)
    return Work(
        batches=batches,
        local=[batches[i] for i in ctx.shard(len(batches))],
        spectrum_local=list(data.subset(share).batches(batch_size)) if len(share) else [],
        spectrum_local_n=len(share),
        spectrum_n=spectrum_n,
        ctx=ctx,
    )
