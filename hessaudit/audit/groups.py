"""Module groups, the Hessian term per group, and the default layers of transformers and adapters.

**Groups.** The paper's text recipe constrains three groups with separate radii: attention
layers, the other linear layers, and the prediction head. Every layer (a parameter name of the
model) gets one group, first rule that applies:

* ``predictor``: the classifier head. For a transformers model, every parameter outside its
  base model (``classifier``, DistilBERT's ``pre_classifier``, RoBERTa's ``classifier.dense`` and
  ``classifier.out_proj``); otherwise the parameters of
  :func:`hessaudit.inputs.models.classifier_names`.
* ``norm``: parameters of a normalization layer (a module whose class name contains ``Norm``).
* ``embedding``: ``nn.Embedding`` weights, everything else inside an ``embeddings`` /
  ``patch_embed`` module (ViT's patch projection, position embeddings, class token), and
  parameters named like timm's ``pos_embed``, ``cls_token``, ``dist_token``, ``reg_token``.
* ``attention``: parameters of a module inside an attention block: a path segment containing
  ``attention`` or ``attn`` (BERT/RoBERTa ``attention.self.query`` ... ``attention.output.dense``,
  DistilBERT ``attention.q_lin`` ... ``out_lin``, ViT ``attention.attention.query``, timm
  ``attn.qkv`` / ``attn.proj``).
* ``linear``: everything else (feed-forward and pooler layers; a CNN's convolutions).

The audit's ``hessian_term_by_group`` is G restricted to each group's layers,
G_g = sqrt(C) * sum_{i in g} sqrt(max(Hcal_i, 0)) / sqrt(n); the G_g add up to G.

**Default layers** (:func:`default_layers`, when no ``--include`` is given): for a PEFT adapter,
the adapted weights and the tensors of ``modules_to_save`` (the others did not move); for a
transformers model, every selected tensor except embeddings (``--include`` brings them in, and
``--include-norm`` the LayerNorm parameters, as for every model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from torch import nn

from hessaudit.audit.bound import hessian_term
from hessaudit.audit.layers import Pairing
from hessaudit.errors import HessauditError

__all__ = ["GROUPS", "default_layers", "hessian_term_by_group", "layer_groups"]

GROUPS = ("attention", "linear", "predictor", "embedding", "norm")
_TOKENS = ("pos_embed", "cls_token", "dist_token", "reg_token", "mask_token")
_EMBEDDING_MODULES = ("embeddings", "embedding", "patch_embed", "patch_embeddings")


def _head_names(model: nn.Module, heads: Collection[str]) -> set[str]:
    from hessaudit.inputs.hf_models import is_hf_model

    prefix = getattr(model, "base_model_prefix", None)
    if is_hf_model(model) and prefix and isinstance(getattr(model, prefix, None), nn.Module):
        return {n for n, _ in model.named_parameters() if not n.startswith(prefix + ".")}
    return set(heads)


def _module_of(model: nn.Module, name: str) -> nn.Module | None:
    path = name.rpartition(".")[0]
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        return None


def _group(name: str, model: nn.Module, heads: set[str]) -> str:
    if name in heads:
        return "predictor"
    module = _module_of(model, name)
    *path, last = name.lower().split(".")
    if module is not None and "Norm" in type(module).__name__:
        return "norm"
    if (isinstance(module, nn.Embedding | nn.EmbeddingBag) or last in _TOKENS
            or any(part in _EMBEDDING_MODULES for part in path)):
        return "embedding"
    if any("attention" in part or "attn" in part for part in path):
        return "attention"
    return "linear"


def layer_groups(
    model: nn.Module, names: Sequence[str], *, heads: Collection[str] = ()
) -> dict[str, str]:
    """The group of each layer name (module docstring), in the order given. ``heads``: the
    classifier's parameter names (:func:`hessaudit.inputs.models.classifier_names`), used for
    models other than transformers."""
    found = _head_names(model, heads)
    return {name: _group(name, model, found) for name in names}


def hessian_term_by_group(
    layers: Sequence[Mapping[str, Any]],
    groups: Mapping[str, str] | None,
    *,
    loss_bound: float,
    n: int,
) -> dict[str, float]:
    """G_g for every group with a measured layer, in :data:`GROUPS` order; a layer without a
    group counts as ``linear``."""
    groups = groups or {}
    hcal: dict[str, list[float]] = {}
    for layer in layers:
        hcal.setdefault(groups.get(layer["name"], "linear"), []).append(float(layer["hcal"]))
    return {
        group: hessian_term(hcal[group], loss_bound=loss_bound, n=n)
        for group in GROUPS if group in hcal
    }


def default_layers(
    pairing: Pairing,
    model: nn.Module | None,
    *,
    include: Sequence[str],
    adapter: Mapping[str, Any] | None,
) -> Pairing:
    """``pairing`` with only the default layers (module docstring); unchanged when
    ``include`` is given or neither rule applies."""
    from hessaudit.inputs.hf_models import is_hf_model

    if include:
        return pairing
    if adapter is not None:
        wanted = {*adapter.get("adapted", ()), *adapter.get("saved", ())}
        keep = [layer for layer in pairing.layers if layer.name in wanted]
        why = "the adapter's adapted and saved modules"
    elif model is not None and is_hf_model(model):
        groups = layer_groups(model, [layer.name for layer in pairing.layers])
        keep = [layer for layer in pairing.layers if groups[layer.name] != "embedding"]
        why = "the transformer's layers other than embeddings"
    else:
        return pairing
    if not keep:
        raise HessauditError(
            f"no layers selected: none of {why} is among the selected tensors",
            hint="choose layers with --include",
        )
    return dataclasses.replace(pairing, layers=keep)
