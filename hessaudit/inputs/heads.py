"""The classifier head of a built model: its parameter names, its number of outputs, and the
number of classes a checkpoint's head weight implies.

The head is timm's ``get_classifier()`` when the model has one, else the last ``nn.Linear`` or
1x1 convolution in module order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["classifier_names", "head_out_features", "infer_num_classes"]


def _head_modules(model: nn.Module) -> list[nn.Module]:
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        try:
            head = getter()
        except Exception:
            head = None
        heads = list(head) if isinstance(head, (tuple, list)) else [head]
        heads = [h for h in heads if isinstance(h, nn.Module)]
        if heads:  # timm's answer, even a parameter-free Identity (num_classes=0)
            return heads
    last: nn.Module | None = None
    for module in model.modules():
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.modules.conv._ConvNd)
            and all(k == 1 for k in module.kernel_size)
        ):
            last = module
    return [last] if last is not None else []


def classifier_names(model: nn.Module) -> list[str]:
    """Names of the classifier head's parameters, as in ``model.named_parameters()``.

    The head is timm's ``get_classifier()`` when the model has one, else the last ``nn.Linear``
    or 1x1 convolution in module order. Empty when the model has no such layer.
    """
    heads = _head_modules(model)
    if not heads:
        return []
    names: list[str] = []
    for prefix, module in model.named_modules():
        if any(module is h for h in heads):
            names.extend(
                f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters()
            )
    # parameters shared by several modules are listed once
    return list(dict.fromkeys(names))


def head_out_features(model: nn.Module) -> int | None:
    """Number of outputs of the head (its weight's first dimension); None when unknown."""
    heads = _head_modules(model)
    if not heads:
        return None
    weight = getattr(heads[0], "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim >= 2 else None


def infer_num_classes(
    tensors: Mapping[str, torch.Tensor], *, head_names: Sequence[str] | None = None
) -> int | None:
    """Number of classes from a checkpoint's head weight (its first dimension).

    With ``head_names`` (e.g. :func:`classifier_names`), the first of them that ends with
    ``.weight`` and is at least 2-D in ``tensors``; else the last 2-D ``*.weight`` tensor in the
    dict's order. None when there is no such tensor.
    """
    if head_names is not None:
        for name in head_names:
            t = tensors.get(name)
            if name.endswith(".weight") and isinstance(t, torch.Tensor) and t.ndim >= 2:
                return int(t.shape[0])
        return None
    found: int | None = None
    for name, t in tensors.items():
        if name.endswith(".weight") and isinstance(t, torch.Tensor) and t.ndim == 2:
            found = int(t.shape[0])
    return found
