"""Turn a model spec into an ``nn.Module`` and load a checkpoint's weights into it.

A model spec (``--model``) is one of the kinds of :data:`MODEL_KINDS`, tried in order:

* a factory ``path/to/file.py:function`` or ``package.module:function``
  (:mod:`hessaudit.inputs.factories`): any spec with a ``:`` that is not one of timm's prefixed
  names (``hf-hub:``, ``hf_hub:``, ``local-dir:``), see :func:`is_factory_spec`;
* a Hugging Face model directory (``config.json``; :mod:`hessaudit.inputs.hf_models`), built
  with transformers offline;
* a timm model name, e.g. ``resnet18`` or ``vit_tiny_patch16_224``
  (:mod:`hessaudit.inputs.timm_models`): everything else.

:func:`build_model` checks the spec and ``num_classes`` and hands the stripped spec to the first
kind that matches; :func:`load_model` builds it with the checkpoint head's number of classes and
loads the weights (:func:`load_weights`), whatever the kind. The head is found by
:mod:`hessaudit.inputs.heads`; what the model expects as input by
:mod:`hessaudit.inputs.data_config` (both re-exported here).

**Adding a kind** (say Hugging Face model folders) is one new module and one entry in
:data:`MODEL_KINDS` (and its import): the module defines ``matches(spec) -> bool`` and a builder
with the keywords of :func:`~hessaudit.inputs.timm_models.build_timm` (``num_classes``,
``allow_hub``, ``check_classes``; a builder ignores those it has no use for), and the entry is
``ModelKind("name", module.matches, module.build)``, before any kind that would also match its
specs (timm, last, takes everything).

timm is imported inside the functions that need it, never at module import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from hessaudit._messages import few, oneline
from hessaudit.errors import HessauditError
from hessaudit.inputs.checkpoint_names import strip_prefixes
from hessaudit.inputs.data_config import InputConfig, input_config
from hessaudit.inputs.factories import build_factory
from hessaudit.inputs.heads import classifier_names, head_out_features, infer_num_classes
from hessaudit.inputs.hf_models import build_hf_model, is_hf_model_dir
from hessaudit.inputs.timm_models import (
    HUB_PREFIXES,
    LOCAL_PREFIX,
    build_timm,
    disable_fused_attention,
)

__all__ = [
    "MODEL_KINDS",
    "InputConfig",
    "ModelKind",
    "build_model",
    "classifier_names",
    "disable_fused_attention",
    "infer_num_classes",
    "input_config",
    "is_factory_spec",
    "load_model",
    "load_weights",
    "model_kind",
]


def is_factory_spec(spec: str) -> bool:
    """Whether ``spec`` names a factory (``file.py:fn``, ``pkg.mod:fn``): it holds a ``:`` and
    is not one of timm's prefixed names."""
    if spec.startswith(HUB_PREFIXES) or spec.startswith(LOCAL_PREFIX):
        return False
    return ":" in spec


@dataclass(frozen=True)
class ModelKind:
    """One kind of ``--model`` spec: ``matches(spec)`` says whether a stripped spec is of this
    kind; ``build(spec, *, num_classes, allow_hub, check_classes)`` builds it (see
    :func:`~hessaudit.inputs.factories.build_factory` for what ``check_classes`` means)."""

    name: str
    matches: Callable[[str], bool]
    build: Callable[..., nn.Module]


#: The kinds of model spec, tried in order; the first whose ``matches`` accepts the spec builds
#: it. Register a new kind here, before timm (which takes every spec).
MODEL_KINDS: tuple[ModelKind, ...] = (
    ModelKind("huggingface", is_hf_model_dir, build_hf_model),
    ModelKind("factory", is_factory_spec, build_factory),
    ModelKind("timm", lambda spec: True, build_timm),
)


def model_kind(spec: str) -> ModelKind:
    """The first kind of :data:`MODEL_KINDS` that takes the (stripped) ``spec``."""
    return next(kind for kind in MODEL_KINDS if kind.matches(spec))


def build_model(
    spec: str, *, num_classes: int | None = None, allow_hub: bool = False
) -> nn.Module:
    """Build the model named by ``spec`` (a timm name or a ``file.py:fn`` / ``pkg.mod:fn`` factory).

    Args:
        spec: The ``--model`` value.
        num_classes: Number of outputs of the head; None keeps the model's default.
        allow_hub: Let timm load pretrained weights from the cache or the network.

    Raises:
        HessauditError: unknown timm name (with close matches), missing factory file or
            function, a factory that raises or returns something other than an ``nn.Module``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise HessauditError("--model is empty: give a timm model name or path/to/file.py:function")
    if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
        raise HessauditError(f"--num-classes {num_classes}: must be a positive integer")
    spec = spec.strip()
    return model_kind(spec).build(
        spec, num_classes=num_classes, allow_hub=allow_hub, check_classes=True
    )


# --------------------------------------------------------------------------- weights


def _align_names(
    model_names: list[str], tensors: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename checkpoint tensors to the model's names when they differ only by wrapper prefixes."""
    if set(model_names) == set(tensors):
        return dict(tensors)
    mapping, removed = strip_prefixes(model_names)
    if removed:
        back = {clean: name for name, clean in mapping.items()}
        if len(back) == len(mapping) and set(back) >= set(tensors):
            return {back[k]: v for k, v in tensors.items()}
    return dict(tensors)


def load_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``tensors`` into ``model`` strictly, with a readable error on any mismatch.

    Names that differ only by wrapper prefixes (``module.``, ``model.``...) are matched. A
    missing ``num_batches_tracked`` buffer is tolerated (torch fills it in).

    Raises:
        HessauditError: missing or unexpected names or shape mismatches, listing a few of each.
    """
    model_state = model.state_dict()
    state = _align_names(list(model_state), tensors)
    missing = [
        k for k in model_state if k not in state and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in model_state]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in model_state.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    what = source or "checkpoint"
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (checkpoint vs model): "
                         f"{few(mismatched, 3)}")
        if missing:
            parts.append(f"{len(missing)} missing from the checkpoint: {few(missing, 3)}")
        if unexpected:
            parts.append(f"{len(unexpected)} not in the model: {few(unexpected, 3)}")
        raise HessauditError(
            f"{what} does not fit the model; " + "; ".join(parts),
            hint="the checkpoint is probably for another architecture, or --model or "
            "--num-classes is wrong",
        )
    for k in model_state:
        if k not in state:  # num_batches_tracked
            state[k] = model_state[k]
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise HessauditError(
            f"{what} could not be loaded into the model: {oneline(exc)}"
        ) from None


def load_model(
    spec: str,
    tensors: Mapping[str, torch.Tensor],
    *,
    num_classes: int | None = None,
    allow_hub: bool = False,
    source: str = "",
) -> nn.Module:
    """Build ``spec``, load ``tensors`` into it and return it in eval mode.

    The number of classes defaults to the checkpoint head's (found through the built model's
    :func:`classifier_names`); an explicit ``num_classes`` that disagrees with it is an error.
    """
    model = build_model(spec, num_classes=num_classes, allow_hub=allow_hub)
    heads = classifier_names(model)
    aligned = _align_names(list(model.state_dict()), tensors)
    inferred = infer_num_classes(aligned, head_names=heads) if heads else None
    what = source or "the checkpoint"
    if num_classes is not None and inferred is not None and inferred != num_classes:
        raise HessauditError(
            f"--num-classes {num_classes} disagrees with {what}, whose head has {inferred} "
            "outputs",
            hint=f"drop --num-classes or pass --num-classes {inferred}",
        )
    if num_classes is None and inferred is not None and inferred != head_out_features(model):
        # rebuilt with the checkpoint's head; a factory without num_classes keeps its own head
        # (check_classes off) and load_weights reports the mismatch
        spec = spec.strip()
        model = model_kind(spec).build(
            spec, num_classes=inferred, allow_hub=allow_hub, check_classes=False
        )
    load_weights(model, tensors, source=source)
    return model.eval()
