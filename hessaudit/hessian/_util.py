"""Shared plumbing of the Hessian engine: input checks, functional parameter dicts, probes.

Private to :mod:`hessaudit.hessian`; the public modules re-validate what users pass them and
then lean on these helpers so every operator rejects the same mistakes with the same words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from hessaudit.errors import HessauditError
from hessaudit.hessian.version import legacy


def check_eval_mode(model: nn.Module) -> None:
    """Refuse a model with any module in training mode.

    Train-mode BatchNorm couples the examples of a batch and double backward through it
    silently updates the running statistics; train-mode dropout makes the loss random. We never
    flip the mode ourselves because the caller owns the model.
    """
    training = [name or "<root>" for name, module in model.named_modules() if module.training]
    if training:
        shown = ", ".join(training[:3]) + (", ..." if len(training) > 3 else "")
        raise HessauditError(
            f"the model is in training mode ({len(training)} module(s): {shown})",
            hint="call model.eval() before building a Hessian operator",
        )


def get_parameter(model: nn.Module, param_name: str) -> nn.Parameter:
    params = dict(model.named_parameters())
    if param_name not in params:
        sample = ", ".join(list(params)[:5])
        raise HessauditError(
            f"the model has no parameter named {param_name!r}",
            hint=f"names look like: {sample}" if sample else "the model has no parameters",
        )
    return params[param_name]


def frozen_parameters(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, Tensor]:
    """Detached views of every parameter except ``exclude``, for ``functional_call``.

    Detaching keeps autograd from recording a graph through the parameters we hold fixed;
    buffers are not listed, so ``functional_call`` takes them from the module as they are.
    """
    skip = set(exclude)
    return {n: p.detach() for n, p in model.named_parameters() if n not in skip}


def as_flat(v: Tensor, size: int, *, dtype: torch.dtype, device: torch.device, what: str) -> Tensor:
    """``v`` reshaped to ``(size,)``; any shape with ``size`` elements is accepted."""
    if not isinstance(v, Tensor):
        raise HessauditError(f"{what} must be a torch.Tensor, got {type(v).__name__}")
    if v.numel() != size:
        raise HessauditError(
            f"{what} has {v.numel()} elements but the block has {size}",
            hint="pass a vector shaped like the parameter or flattened to its size",
        )
    return v.reshape(size).to(device=device, dtype=dtype)


def as_rows(U: Tensor, size: int, *, dtype: torch.dtype, device: torch.device, what: str) -> Tensor:
    """``U`` as a ``(B, size)`` matrix of row vectors."""
    if not isinstance(U, Tensor):
        raise HessauditError(f"{what} must be a torch.Tensor, got {type(U).__name__}")
    if U.ndim != 2 or U.shape[1] != size:
        raise HessauditError(f"{what} has shape {tuple(U.shape)}; expected (B, {size})")
    return U.to(device=device, dtype=dtype)


def check_batches(batches: Sequence[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """Validate a sequence of ``(x, y)`` pairs and return it as a list."""
    if isinstance(batches, tuple) and len(batches) == 2 and isinstance(batches[0], Tensor):
        raise HessauditError(
            "batches must be a sequence of (x, y) pairs, got a single (x, y) pair",
            hint="wrap it in a list: [(x, y)]",
        )
    out = list(batches)
    if not out:
        raise HessauditError("no batches given: the loss over zero examples is undefined")
    for i, pair in enumerate(out):
        if len(pair) != 2:
            raise HessauditError(f"batch {i} is not an (x, y) pair")
        x, y = pair
        check_xy(x, y, what=f"batch {i}")
    return out


def check_xy(x: Tensor, y: Tensor, *, what: str = "the batch") -> None:
    if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise HessauditError(
            f"{what}: inputs of shape {tuple(x.shape)} and labels of shape {tuple(y.shape)} "
            "do not match",
            hint="labels must be a 1-D tensor of class indices, one per input",
        )
    if x.shape[0] == 0:
        raise HessauditError(f"{what} is empty")


def random_normal(
    size: int | tuple[int, ...], *, generator: torch.Generator, dtype: torch.dtype,
    device: torch.device | str | None,
) -> Tensor:
    """Gaussian draws from ``generator`` (on the generator's device), moved to ``device``."""
    shape = (size,) if isinstance(size, int) else size
    out = torch.randn(shape, generator=generator, dtype=dtype, device=generator.device)
    return out.to(device)


def random_rademacher(
    shape: tuple[int, ...], *, generator: torch.Generator, dtype: torch.dtype,
    device: torch.device | str | None,
) -> Tensor:
    """Uniform +-1 draws from ``generator``, moved to ``device``."""
    if dtype.is_floating_point and not legacy():
        # the same draws as int64 ones (randint consumes the generator by range, not dtype),
        # without the int64 buffer and its conversion: 2.5x faster on large blocks
        bits = torch.randint(0, 2, shape, generator=generator, device=generator.device,
                             dtype=dtype)
        return bits.mul_(2).sub_(1).to(device)
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return (bits.to(dtype) * 2 - 1).to(device)


def check_generator(generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise HessauditError(
            "a torch.Generator is required (estimators never use the global RNG)",
            hint="pass generator=torch.Generator().manual_seed(SEED)",
        )
    return generator


def tiny(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).tiny) if dtype.is_floating_point else 1e-300


class BlockOperator:
    """What every one-parameter block operator holds: the model, its batches, the block's
    parameter and the bookkeeping (``size``, ``shape``, ``dtype``, ``device``,
    ``num_examples``, ``num_matvecs``). Subclasses add ``matvec``."""

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[tuple[Tensor, Tensor]],
        param_name: str,
        *,
        cache_graph: bool,
        chunk_size: int | None,
    ) -> None:
        check_eval_mode(model)
        param = get_parameter(model, param_name)
        self.model = model
        self.param_name = param_name
        self.batches = check_batches(batches)
        self.cache_graph = cache_graph
        self.chunk_size = chunk_size
        self.size: int = param.numel()
        self.shape = param.shape
        self.dtype: torch.dtype = param.dtype
        self.device: torch.device = param.device
        self.num_examples: int = sum(int(x.shape[0]) for x, _ in self.batches)
        self.num_matvecs: int = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.param_name!r}, size={self.size}, "
            f"examples={self.num_examples}, batches={len(self.batches)})"
        )
