"""Running hessaudit under ``torchrun``: process-group set-up, sharding and reductions.

``torchrun --nproc_per_node N -m hessaudit measure ...`` (or ``finetune``) starts N copies of the
command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in the
environment. :func:`init` reads them and creates the default process group once: ``gloo`` for
``--device cpu``, ``nccl`` for ``--device cuda`` (each rank then uses ``cuda:LOCAL_RANK``).
Without those variables (or with ``WORLD_SIZE=1``) nothing is initialised and every helper
below is the identity, so single-process code paths are the same code.

How the work is split (see docs/scaling.md):

* ``measure``: every rank loads the same model and data; the audit's mini-batches are dealt out
  round-robin (batch b to rank b mod N), so ``batch-max`` sees the same batches as one process.
  Per-example and per-batch maxima are combined with all-reduce MAX, sums and counts with
  all-reduce SUM. Operators over a set of examples (the mean-loss Hessian of ``--reduce mean``
  and of the spectrum) are split by examples, and each product is all-reduced (SUM, weighted by
  the shard's share of the examples), so every rank runs the same Lanczos / Hutchinson iteration
  on the same vectors and the result equals a one-process run up to float32 round-off.
* ``finetune``: DistributedDataParallel; each rank takes its slice of every global mini-batch
  (the shuffling generator is seeded identically on all ranks), gradients are averaged, and the
  projection runs on every rank on identical weights. Only rank 0 writes files and shows
  progress.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hessaudit.errors import HessauditError


@dataclass(frozen=True)
class Context:
    """Where this process stands in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- sharding
    def shard(self, count: int) -> list[int]:
        """Round-robin share of ``count`` items (item b goes to rank b mod world_size)."""
        return list(range(self.rank, count, self.world_size))

    def split(self, count: int) -> range:
        """Contiguous, balanced share of ``count`` items (sizes differ by at most one)."""
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))

    # ---- reductions (identity in one process)
    def _reduce(self, values: Tensor, op) -> Tensor:
        if not self.enabled:
            return values
        device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else "cpu"
        buf = values.detach().to(device=device).clone()
        torch.distributed.all_reduce(buf, op=op)
        return buf.to(values.device)

    def sum(self, values: Tensor) -> Tensor:
        return self._reduce(values, _op("SUM"))

    def max(self, values: Tensor) -> Tensor:
        return self._reduce(values, _op("MAX"))

    def min(self, values: Tensor) -> Tensor:
        return self._reduce(values, _op("MIN"))

    def sum_float(self, value: float) -> float:
        return float(self.sum(torch.tensor([value], dtype=torch.float64)))

    def max_float(self, value: float) -> float:
        return float(self.max(torch.tensor([value], dtype=torch.float64)))

    def all_true(self, flag: bool) -> bool:
        return bool(self.min(torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)) > 0)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


SINGLE = Context()


def _op(name: str):
    return getattr(torch.distributed.ReduceOp, name)


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init(device: str = "cpu") -> Context:
    """The job's :class:`Context`, creating the default process group under ``torchrun``.

    ``device`` is the user's ``--device``: ``cpu`` selects ``gloo``, ``cuda``/``cuda:N`` selects
    ``nccl`` (and the caller should use :func:`local_device`). Idempotent.
    """
    if env_world_size() <= 1:
        return SINGLE
    if not torch.distributed.is_available():
        raise HessauditError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    cuda = device.startswith("cuda")
    if not torch.distributed.is_initialized():
        backend = "nccl" if cuda else "gloo"
        if cuda:
            if not torch.cuda.is_available():
                raise HessauditError(
                    f"--device {device} under torchrun: CUDA is not available",
                    hint="use --device cpu (gloo)",
                )
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            torch.distributed.init_process_group(backend=backend)
        except (RuntimeError, ValueError) as exc:
            raise HessauditError(
                f"cannot join the torchrun job: {exc}",
                hint="launch with torchrun, which sets RANK, WORLD_SIZE, MASTER_ADDR/PORT",
            ) from exc
    return current()


def current() -> Context:
    """The context of an already initialised process group (or :data:`SINGLE`)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return SINGLE
    return Context(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=torch.distributed.get_backend(),
    )


def is_main() -> bool:
    """True in a one-process run and on rank 0 of a distributed one."""
    return current().is_main


def local_device(device: str, ctx: Context) -> str:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` in a multi-process job; anything else is unchanged."""
    if ctx.enabled and device == "cuda":
        return f"cuda:{ctx.local_rank}"
    return device


DDP = torch.nn.parallel.DistributedDataParallel


def ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel in a multi-process job, else itself.

    The wrapper shares the module's parameters, so projections and checkpoints keep using the
    plain module; only the training forward goes through the wrapper.
    """
    ctx = current()
    if not ctx.enabled:
        return model
    ids = [device.index if device.index is not None else ctx.local_rank]
    return DDP(model, device_ids=ids if device.type == "cuda" else None)


def batch_slice(idx: Tensor, ctx: Context) -> tuple[Tensor, float | None]:
    """This rank's slice of one global mini-batch, and the weight of its mean loss.

    DDP averages gradients over ranks; weighting each rank's mean loss by
    ``world_size * n_rank / n_batch`` makes that average the gradient of the global batch's
    mean loss even when the batch does not split evenly. A rank left without examples runs one
    example with weight 0 (every rank must join each gradient all-reduce). ``(idx, None)`` in
    one process.
    """
    if not ctx.enabled:
        return idx, None
    mine = idx[ctx.rank :: ctx.world_size]
    if len(mine) == 0:
        return idx[:1], 0.0
    return mine, ctx.world_size * len(mine) / len(idx)


class ShardedOperator:
    """The mean-loss operator over all ranks' examples, from each rank's local operator.

    ``local`` is the operator over this rank's ``local_examples`` (normalised by them, as
    :class:`~hessaudit.hessian.BlockHessian` is), or None when this rank holds none. A product is
    ``sum_r (N_r / N) * local_r(u)``, all-reduced, so every rank gets the same vector.
    """

    def __init__(
        self,
        local: object | None,
        local_examples: int,
        total_examples: int,
        *,
        size: int,
        dtype: torch.dtype,
        device: torch.device,
        ctx: Context,
    ) -> None:
        self.local = local
        self.weight = local_examples / total_examples
        self.size, self.dtype, self.device, self.ctx = size, dtype, device, ctx

    def matvec(self, u: Tensor) -> Tensor:
        if self.local is None:
            out = torch.zeros(u.shape, dtype=self.dtype, device=self.device)
        else:
            matvec: Callable[[Tensor], Tensor] = self.local.matvec  # type: ignore[attr-defined]
            out = matvec(u)
            if self.weight != 1.0:
                out = out * self.weight
        return self.ctx.sum(out)

    __call__ = matvec


__all__ = [
    "DDP",
    "SINGLE",
    "Context",
    "ShardedOperator",
    "batch_slice",
    "current",
    "ddp",
    "env_world_size",
    "init",
    "is_main",
    "local_device",
]
