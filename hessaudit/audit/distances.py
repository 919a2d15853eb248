"""Plain weight distances between two checkpoints: what fine-tuning changed, no Hessian work.

This is the library side of ``hessaudit inspect``. For every selected layer it reports
||W_ft - W_pre||_F and the relative distance ||W_ft - W_pre||_F / ||W_pre||_F (for a new head,
the distance from zero and no relative distance), plus the tensors that could not be paired.

Without ``model``, two plain safetensors files (:mod:`hessaudit.inputs.safetensors_arrays`)
are compared without torch: layer by layer, each pair read from the files as numpy float64
arrays, so that ``inspect`` needs a fraction of the memory (docs/performance.md, "Memory of the
light commands"). The numbers are the torch path's up to the summation order of the norms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hessaudit.audit.layers import Pairing
    from hessaudit.inputs.checkpoints import FileRecord
    from hessaudit.inputs.safetensors_arrays import ArrayTensor


@dataclass(frozen=True)
class LayerDistance:
    name: str
    shape: tuple[int, ...]
    numel: int
    dist_fro: float
    rel_dist: float | None
    is_new_head: bool

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "shape": list(self.shape)}


@dataclass(frozen=True)
class DistanceReport:
    pretrained: FileRecord
    finetuned: FileRecord
    model: str | None
    layers: list[LayerDistance]
    only_in_pretrained: list[str]
    only_in_finetuned: list[str]
    shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "hessaudit.inspect/1",
            "pretrained": self.pretrained.to_dict(),
            "finetuned": self.finetuned.to_dict(),
            "model": self.model,
            "layers": [layer.to_dict() for layer in self.layers],
            "only_in_pretrained": self.only_in_pretrained,
            "only_in_finetuned": self.only_in_finetuned,
            "shape_mismatches": [
                {"name": name, "pretrained": list(a), "finetuned": list(b)}
                for name, a, b in self.shape_mismatches
            ],
        }


def compare_weights(
    pretrained_path: str,
    finetuned_path: str,
    *,
    model: str | None = None,
    num_classes: int | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_bias: bool = False,
    include_norm: bool = False,
    exclude_new_head: bool = False,
    allow_hub: bool = False,
) -> DistanceReport:
    """Load two checkpoints and measure how far each layer moved.

    When ``model`` is given, the fine-tuned checkpoint must load into it (which catches a
    checkpoint of another architecture early) and only the model's parameters count as layers.
    """
    from hessaudit.audit.layers import pair_layers

    if model is None:  # two plain safetensors files: no torch needed
        report = _compare_plain_safetensors(
            pretrained_path, finetuned_path, include=include, exclude=exclude,
            include_bias=include_bias, include_norm=include_norm,
            exclude_new_head=exclude_new_head,
        )
        if report is not None:
            return report
    # any other pair (torch files, Hugging Face directories, adapters): with torch
    from hessaudit.audit.groups import default_layers
    from hessaudit.inputs.checkpoints import load_checkpoint
    from hessaudit.inputs.lora import load_finetuned

    pretrained = load_checkpoint(pretrained_path)
    finetuned = load_finetuned(finetuned_path, pretrained)  # a PEFT adapter: merged
    parameter_names = order = module = None
    if model is not None:
        from hessaudit.inputs.models import load_model

        module = load_model(
            model,
            finetuned.tensors,
            num_classes=num_classes,
            allow_hub=allow_hub,
            source=finetuned_path,
        )
        parameter_names = {name for name, _ in module.named_parameters()}
        order = list(module.state_dict())
    pairing = pair_layers(
        pretrained.tensors,
        finetuned.tensors,
        include=tuple(include),
        exclude=tuple(exclude),
        include_bias=include_bias,
        include_norm=include_norm,
        new_heads="exclude" if exclude_new_head else "from-zero",
        parameter_names=parameter_names,
        order=order,
    )
    pairing = default_layers(  # transformers and adapters: default layers
        pairing, module, include=include, adapter=finetuned.metadata.get("adapter")
    )
    layers = [
        LayerDistance(
            name=layer.name,
            shape=tuple(layer.shape),
            numel=layer.numel,
            dist_fro=float(layer.dist_fro),
            rel_dist=None if layer.rel_dist is None else float(layer.rel_dist),
            is_new_head=layer.is_new_head,
        )
        for layer in pairing.layers
    ]
    return _report(pretrained.record, finetuned.record, model, layers, pairing)


def _compare_plain_safetensors(
    pretrained_path: str,
    finetuned_path: str,
    *,
    include: Sequence[str],
    exclude: Sequence[str],
    include_bias: bool,
    include_norm: bool,
    exclude_new_head: bool,
) -> DistanceReport | None:
    """:func:`compare_weights` of two plain safetensors files, without torch; None when either
    file is not plain (the torch path then reads both and says what is wrong)."""
    from hessaudit.audit.layers import pair_layers
    from hessaudit.inputs.safetensors_arrays import read_plain

    pretrained = read_plain(pretrained_path)
    finetuned = read_plain(finetuned_path) if pretrained is not None else None
    if pretrained is None or finetuned is None:
        return None
    pairing = pair_layers(
        pretrained.tensors,
        finetuned.tensors,
        include=tuple(include),
        exclude=tuple(exclude),
        include_bias=include_bias,
        include_norm=include_norm,
        new_heads="exclude" if exclude_new_head else "from-zero",
    )
    layers = []
    for layer in pairing.layers:
        dist_fro, rel_dist = _distances(layer.pretrained, layer.finetuned)
        layers.append(LayerDistance(
            name=layer.name, shape=tuple(layer.shape), numel=layer.numel, dist_fro=dist_fro,
            rel_dist=rel_dist, is_new_head=layer.is_new_head,
        ))
    return _report(pretrained.record, finetuned.record, None, layers, pairing)


def _report(pretrained: FileRecord, finetuned: FileRecord, model: str | None,
            layers: list[LayerDistance], pairing: Pairing) -> DistanceReport:
    """The report of ``layers`` and of the tensors ``pairing`` left unpaired."""
    return DistanceReport(
        pretrained=pretrained,
        finetuned=finetuned,
        model=model,
        layers=layers,
        only_in_pretrained=list(pairing.only_in_pretrained),
        only_in_finetuned=list(pairing.only_in_finetuned),
        shape_mismatches=list(pairing.shape_mismatches),
    )


def _distances(
    pretrained: ArrayTensor | None, finetuned: ArrayTensor
) -> tuple[float, float | None]:
    """``(||W_ft - W_pre||_F, ||W_ft - W_pre||_F / ||W_pre||_F)`` in float64, as
    :attr:`hessaudit.audit.layers.Layer.dist_fro` and ``rel_dist`` compute them with torch (a
    new head: the distance from zero, no relative distance)."""
    ft = finetuned.float64()
    if pretrained is None:
        return _norm(ft), None
    pre = pretrained.float64()
    dist_fro = _norm(ft - pre)
    norm = _norm(pre)
    return dist_fro, None if norm == 0.0 else dist_fro / norm


def _norm(x: Any) -> float:
    """sqrt(sum x_i^2) of a float64 array, by numpy's pairwise summation: a few ulps from the
    exact value, where torch's norm drifts with the size (3e-13 relative at 2e7 entries)."""
    import numpy as np

    return math.sqrt(float(np.sum(np.square(x))))
