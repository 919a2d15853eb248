"""Normalization layers whose second forward-mode derivative is exact.

PyTorch's forward-over-forward derivative of ``layer_norm``, of ``instance_norm`` (input
statistics) and of ``batch_norm`` in training mode is wrong (torch 2.14; the first derivative
and forward-over-reverse are right). On a (2, 4, 3) input, with v the direction,
``jvp(jvp(f))`` gives v^T H v = 3.765 where the dense Hessian gives 3.825. The raw block form
v^T H_n v of :func:`~hessaudit.hessian.per_example.per_example_directional_second_derivative`
is exactly that computation, so without this module every network with a LayerNorm (vision
transformers, BERT) would get a wrong raw form, and the checks built on it a wrong reference.

:func:`exact_norms` is a :class:`~torch.overrides.TorchFunctionMode` under which these three
functions are computed from their definitions, with ops whose higher derivatives are right:

    layer_norm(x) = (x - mean(x)) * rsqrt(var(x) + eps) * weight + bias,

the mean and the biased variance taken over the normalized trailing dimensions (for
``instance_norm``: over the spatial dimensions of each example and channel; for training-mode
``batch_norm``: over the batch and spatial dimensions of each channel). The values agree with
the fused kernels to round-off; eval-mode ``batch_norm`` (an affine map) and every other
function pass through unchanged, so networks without these layers compute bit for bit what
they did before. Running statistics are not updated under the mode (it is used only to
measure).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["exact_norms"]


def _normalize(x: Tensor, dims: Sequence[int], eps: float) -> Tensor:
    mean = x.mean(dim=tuple(dims), keepdim=True)
    centered = x - mean
    var = centered.square().mean(dim=tuple(dims), keepdim=True)
    return centered * torch.rsqrt(var + eps)


def _channel_affine(y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    shape = (1, -1) + (1,) * (y.ndim - 2)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _layer_norm(input: Tensor, normalized_shape: Sequence[int], weight: Tensor | None = None,
                bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    dims = range(-len(tuple(normalized_shape)), 0)
    y = _normalize(input, dims, eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _instance_norm(input: Tensor, running_mean: Tensor | None = None,
                   running_var: Tensor | None = None, weight: Tensor | None = None,
                   bias: Tensor | None = None, use_input_stats: bool = True,
                   momentum: float = 0.1, eps: float = 1e-5) -> Tensor | None:
    if not use_input_stats:
        return None  # normalized with running statistics: affine, the kernel is exact
    return _channel_affine(_normalize(input, range(2, input.ndim), eps), weight, bias)


def _batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                weight: Tensor | None = None, bias: Tensor | None = None,
                training: bool = False, momentum: float = 0.1,
                eps: float = 1e-5) -> Tensor | None:
    if not training:
        return None  # eval mode: affine, the kernel is exact
    dims = [0, *range(2, input.ndim)]
    return _channel_affine(_normalize(input, dims, eps), weight, bias)


_REPLACE: dict[Any, Any] = {
    F.layer_norm: _layer_norm,
    torch.layer_norm: _layer_norm,
    F.instance_norm: _instance_norm,
    F.batch_norm: _batch_norm,
}


class _ExactNorms(TorchFunctionMode):

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        replacement = _REPLACE.get(func)
        if replacement is not None:
            out = replacement(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def exact_norms() -> TorchFunctionMode:
    """A context manager under which layer, instance and training-mode batch normalization
    are computed from their definitions (exact higher forward-mode derivatives)."""
    return _ExactNorms()
