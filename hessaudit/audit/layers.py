"""Which tensors are layers, and how the pretrained and fine-tuned ones pair up.

A *layer* is one weight tensor of the fine-tuned checkpoint. Selection, in this order:

1. candidates: floating-point tensors, never buffers (names ending in ``running_mean``,
   ``running_var`` or ``num_batches_tracked``, and anything not in ``parameter_names`` when
   that is given);
2. kind: tensors with 2 or more dimensions (conv and linear kernels, embeddings) always;
   biases (``*.bias`` of a layer whose weight is a kernel, or of no weight) only with
   ``include_bias``; every other 1-D or 0-D tensor (normalization weights and biases, layer
   scales) only with ``include_norm``;
3. ``include`` globs (fnmatch, on names): keep only tensors matching one of them; each glob must
   match some tensor of the fine-tuned checkpoint;
4. ``exclude`` globs: drop tensors matching any of them.

A selected tensor that the pretrained checkpoint lacks, or has with another shape, is a *new
head*: with ``new_heads="from-zero"`` (default, as the paper's released code does) its distance
is measured from zero (``delta`` = the fine-tuned tensor); with ``"exclude"`` it is left out.
Layers follow the fine-tuned checkpoint's order, or ``order`` when given (e.g. the model's
``state_dict()`` names, for safetensors files whose names are stored sorted).
"""

from __future__ import annotations

import fnmatch
import functools
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # selection reads only shapes and dtypes: inspect pairs numpy views too
    import torch
    from torch import Tensor

from hessaudit._messages import few
from hessaudit.errors import HessauditError

__all__ = [
    "NEW_HEAD_POLICIES", "Layer", "Pairing", "distance_vector", "pair_layers", "tensor_kind",
]

NEW_HEAD_POLICIES = ("from-zero", "exclude")
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True, eq=False)
class Layer:
    """One weight tensor: its pretrained and fine-tuned values (pretrained None: new head)."""

    name: str
    shape: tuple[int, ...]
    numel: int
    is_new_head: bool
    pretrained: Tensor | None
    finetuned: Tensor

    @property
    def delta(self) -> Tensor:
        """Fine-tuned minus pretrained, in the fine-tuned dtype; the fine-tuned tensor itself
        for a new head (distance from zero)."""
        return self.delta_as(dtype=self.finetuned.dtype, device=self.finetuned.device)

    def delta_as(self, *, dtype: torch.dtype, device: torch.device | str | None = None
                 ) -> Tensor:
        """Fine-tuned minus pretrained computed in ``dtype``: both tensors are cast to
        ``dtype`` first and then subtracted, so a float64 audit of float32 checkpoints gets the
        exact difference (subtracting in float32 and casting loses ~1e-8 relative)."""
        device = self.finetuned.device if device is None else device
        ft = self.finetuned.detach().to(device=device, dtype=dtype)
        if self.pretrained is None:
            return ft
        return ft - self.pretrained.detach().to(device=device, dtype=dtype)

    @functools.cached_property
    def dist_fro(self) -> float:
        """Frobenius norm of the exact difference (both tensors cast to float64 first)."""
        import torch

        return float(torch.linalg.vector_norm(self.delta_as(dtype=torch.float64)))

    @functools.cached_property
    def rel_dist(self) -> float | None:
        """``dist_fro / ||pretrained||``; None for a new head or an all-zero pretrained tensor."""
        if self.pretrained is None:
            return None
        import torch

        norm = float(torch.linalg.vector_norm(self.pretrained.detach().to(torch.float64)))
        return None if norm == 0.0 else self.dist_fro / norm

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "numel": self.numel,
            "is_new_head": self.is_new_head,
            "dist_fro": self.dist_fro,
            "rel_dist": self.rel_dist,
        }


def distance_vector(model: torch.nn.Module, layer: Layer) -> Tensor:
    """The layer's v = W_ft - W_pre in the dtype, device and shape of the model's parameter of
    that name: both tensors are cast first, then subtracted (a float32 difference cast to
    float64 would be ~1e-8 off)."""
    param = dict(model.named_parameters())[layer.name]
    return layer.delta_as(dtype=param.dtype, device=param.device).reshape(param.shape)


@dataclass(frozen=True, eq=False)
class Pairing:
    """Selected layers, and the selectable tensors that did not pair up.

    ``only_in_pretrained`` / ``only_in_finetuned`` / ``shape_mismatches`` list tensors that pass
    the selection rules but have no counterpart of the same shape in the other checkpoint
    (the fine-tuned ones are the new heads).
    """

    layers: list[Layer]
    only_in_pretrained: list[str]
    only_in_finetuned: list[str]
    shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    @property
    def new_heads(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.is_new_head]

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "num_layers": len(self.layers),
            "numel": self.numel,
            "new_heads": self.new_heads,
            "only_in_pretrained": list(self.only_in_pretrained),
            "only_in_finetuned": list(self.only_in_finetuned),
            "shape_mismatches": [
                {"name": name, "pretrained": list(a), "finetuned": list(b)}
                for name, a, b in self.shape_mismatches
            ],
        }


def tensor_kind(name: str, tensor: Tensor, tensors: Mapping[str, Tensor]) -> str | None:
    """Classify a tensor for selection: ``"weight"``, ``"bias"``, ``"norm"`` or None (never a
    layer: buffers, non-floating tensors)."""
    if not tensor.is_floating_point() or name.endswith(_BUFFER_SUFFIXES):
        return None
    if tensor.ndim >= 2:
        return "weight"
    if name.endswith(".bias") or name == "bias":
        sibling = tensors.get(name[: -len("bias")] + "weight")
        if sibling is None or sibling.ndim >= 2:
            return "bias"
    return "norm"


def pair_layers(
    pretrained: Mapping[str, Tensor],
    finetuned: Mapping[str, Tensor],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_bias: bool = False,
    include_norm: bool = False,
    new_heads: str = "from-zero",
    parameter_names: Collection[str] | None = None,
    order: Sequence[str] | None = None,
) -> Pairing:
    """Select the fine-tuned checkpoint's layers and pair them with the pretrained tensors.

    Args:
        pretrained: The pretrained state dict (cleaned, as from ``load_checkpoint``).
        finetuned: The fine-tuned state dict.
        include: fnmatch globs; keep only matching tensors (``--include``).
        exclude: fnmatch globs; drop matching tensors (``--exclude``), applied after include.
        include_bias: Also select biases of kernels.
        include_norm: Also select other 1-D tensors (normalization parameters, layer scales).
        new_heads: ``"from-zero"`` (measure new heads from zero) or ``"exclude"``.
        parameter_names: The model's parameter names; anything else is a buffer, never a layer.
        order: Names giving the layer order (others follow in checkpoint order).

    Raises:
        HessauditError: an unknown ``new_heads``; an ``include`` glob matching nothing; no
            layer selected; no selected layer with a pretrained counterpart.
    """
    if new_heads not in NEW_HEAD_POLICIES:
        raise HessauditError(
            f"new_heads {new_heads!r}: must be one of {', '.join(NEW_HEAD_POLICIES)}"
        )
    include = tuple(include)
    exclude = tuple(exclude)
    allowed = {
        "weight": True, "bias": bool(include_bias), "norm": bool(include_norm), None: False
    }
    params = None if parameter_names is None else set(parameter_names)

    def eligible(
        name: str, tensor: Tensor, tensors: Mapping[str, Tensor], *, check_params: bool = True
    ) -> bool:
        if check_params and params is not None and name not in params:
            return False
        return allowed[tensor_kind(name, tensor, tensors)]

    def chosen(name: str) -> bool:
        if include and not any(fnmatch.fnmatchcase(name, g) for g in include):
            return False
        return not any(fnmatch.fnmatchcase(name, g) for g in exclude)

    ft_eligible = [n for n, t in finetuned.items() if eligible(n, t, finetuned)]
    _check_globs(include, exclude, finetuned, ft_eligible)
    selected = [n for n in ft_eligible if chosen(n)]
    if not selected:
        raise HessauditError(
            "no layers selected: every tensor of the fine-tuned checkpoint was filtered out",
            hint="check --include / --exclude",
        )
    if order is not None:
        rank = {name: i for i, name in enumerate(order)}
        position = {name: i for i, name in enumerate(selected)}
        selected.sort(key=lambda n: (rank.get(n, len(rank)), position[n]))

    layers, only_in_finetuned, mismatches = _pair(selected, pretrained, finetuned, new_heads)
    # the model's parameter names describe the fine-tuned side only
    only_in_pretrained = [
        n for n, t in pretrained.items()
        if n not in finetuned and chosen(n) and eligible(n, t, pretrained, check_params=False)
    ]
    # A selection of new heads alone is fine when asked for by name; with no --include it
    # means the two files have nothing in common (another architecture).
    if not layers or (not include and not any(not layer.is_new_head for layer in layers)):
        raise HessauditError(
            f"the checkpoints share no layers: none of the {len(selected)} selected tensors of "
            "the fine-tuned checkpoint has a pretrained counterpart of the same name and shape "
            f"(fine-tuned: {few(selected, 3)}; pretrained: {few(list(pretrained), 3)})",
            hint="the two checkpoints are probably for different architectures",
        )
    return Pairing(
        layers=layers,
        only_in_pretrained=only_in_pretrained,
        only_in_finetuned=only_in_finetuned,
        shape_mismatches=mismatches,
    )


def _check_globs(
    include: Sequence[str],
    exclude: Sequence[str],
    finetuned: Mapping[str, Tensor],
    eligible: Sequence[str],
) -> None:
    """Refuse an ``include`` glob that matches no eligible tensor, saying why; warn about an
    ``exclude`` glob that matches no tensor at all."""
    for glob in include:
        if not any(fnmatch.fnmatchcase(n, glob) for n in eligible):
            anywhere = [n for n in finetuned if fnmatch.fnmatchcase(n, glob)]
            if anywhere:
                why = (
                    f"it matches only tensors that are not selected ({few(anywhere, 3)}): "
                    "biases need --include-bias, norm parameters --include-norm, and buffers "
                    "are never layers"
                )
            else:
                why = (
                    "it matches no tensor of the fine-tuned checkpoint; names look like "
                    + few(eligible)
                )
            raise HessauditError(f"--include {glob!r}: {why}")
    for glob in exclude:
        if not any(fnmatch.fnmatchcase(n, glob) for n in finetuned):
            # stacklevel 3: the warning points at pair_layers' caller
            warnings.warn(f"--exclude {glob!r} matches no tensor", UserWarning, stacklevel=3)


def _pair(
    selected: Sequence[str],
    pretrained: Mapping[str, Tensor],
    finetuned: Mapping[str, Tensor],
    new_heads: str,
) -> tuple[list[Layer], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """Pair each selected fine-tuned tensor with the pretrained tensor of the same name and
    shape: (layers, names only in the fine-tuned checkpoint, shape mismatches). A tensor
    without a counterpart is a new head, measured from zero under ``"from-zero"``."""
    layers: list[Layer] = []
    only_in_finetuned: list[str] = []
    mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for name in selected:
        ft = finetuned[name]
        pre = pretrained.get(name)
        shape = tuple(int(s) for s in ft.shape)
        if pre is None:
            only_in_finetuned.append(name)
        elif tuple(pre.shape) != shape:
            mismatches.append((name, tuple(int(s) for s in pre.shape), shape))
        else:
            layers.append(Layer(name, shape, ft.numel(), False, pre, ft))
            continue
        if new_heads == "from-zero":
            layers.append(Layer(name, shape, ft.numel(), True, None, ft))
    return layers, only_in_finetuned, mismatches


def unpaired_record(pairing: Pairing) -> dict[str, Any]:
    """The document's ``unpaired``: selectable tensors without a same-shape counterpart."""
    return {
        "only_in_pretrained": list(pairing.only_in_pretrained),
        "only_in_finetuned": list(pairing.only_in_finetuned),
        "shape_mismatches": [
            {"name": name, "pretrained": list(a), "finetuned": list(b)}
            for name, a, b in pairing.shape_mismatches
        ],
    }
