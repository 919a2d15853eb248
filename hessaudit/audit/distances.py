"""Plain weight distances between two checkpoints: what fine-tuning changed, no Hessian work.

This is the library side of ``hessaudit inspect``. For every selected layer it reports
||W_ft - W_pre||_F and the relative distance ||W_ft - W_pre||_F / ||W_pre||_F (for a new head,
the distance from zero and no relative distance), plus the tensors that could not be paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hessaudit.inputs.checkpoints import FileRecord


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
    from hessaudit.audit.groups import default_layers
    from hessaudit.audit.layers import pair_layers
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
    return DistanceReport(
        pretrained=pretrained.record,
        finetuned=finetuned.record,
        model=model,
        layers=layers,
        only_in_pretrained=list(pairing.only_in_pretrained),
        only_in_finetuned=list(pairing.only_in_finetuned),
        shape_mismatches=list(pairing.shape_mismatches),
    )
