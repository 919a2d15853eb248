"""Projection radii by module group: ``--radius-attention`` and ``--radius-linear``.

The seed's text recipe constrains three groups with separate radii: the attention layers
(``reg_attention``), the encoder's other linear layers (``reg_linear``) and the prediction head
(``reg_predictor``). The groups are the audit's, :func:`hessaudit.audit.groups.layer_groups`
(one definition for both): ``attention`` (a path segment holding ``attention`` or ``attn``:
BERT/RoBERTa's query, key, value and attention output), ``linear`` (the other weight tensors:
feed-forward and pooler layers, a CNN's convolutions), ``predictor`` (the classifier),
``embedding`` and ``norm``.

Every constrained tensor (a trainable tensor with 2+ dimensions,
:func:`hessaudit.robust.projection.constrainable_names`) gets its radius by the first rule that
applies:

1. a ``--radius-table`` pattern that matches its name (an explicit glob always wins);
2. a **new** tensor (no pretrained value: the new head): ``--head-radius`` around zero, or
   unconstrained without it;
3. the ``attention`` group with ``--radius-attention``, the ``linear`` group with
   ``--radius-linear``: that radius, around the pretrained value (no ``--radius-growth``);
4. otherwise the depth rule of :func:`hessaudit.robust.projection.layer_radii`: ``--radius``
   times ``--radius-growth`` per stage; this covers the embeddings and a pretrained classifier
   kept with its shape, and every group whose flag is not given.

So with neither flag every radius is what it was before the flags existed, and with the default
``--radius-growth 1`` "defaults to ``--radius``" holds for each group.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from torch import nn

__all__ = ["group_radii", "tensor_groups"]


def tensor_groups(model: nn.Module, names: Sequence[str]) -> dict[str, str]:
    """The module group of each parameter name (:func:`hessaudit.audit.groups.layer_groups`;
    for a :class:`~hessaudit.inputs.text_model.TextClassifier`, of the model it wraps, whose
    parameter names it shares)."""
    from hessaudit.audit.groups import layer_groups
    from hessaudit.inputs.models import classifier_names

    target = getattr(model, "hf_model", model)
    return layer_groups(target, list(names), heads=classifier_names(model))


def group_radii(
    model: nn.Module,
    names: Sequence[str],
    *,
    new: Collection[str],
    attention: float | None,
    linear: float | None,
) -> dict[str, float]:
    """Rule 3 of the module docstring: the radius of each pretrained tensor of ``names`` in the
    ``attention`` group (``attention``) or the ``linear`` group (``linear``); tensors in
    ``new``, other groups, and groups whose radius is None are absent."""
    if attention is None and linear is None:
        return {}
    by_group = {"attention": attention, "linear": linear}
    groups = tensor_groups(model, names)
    out: dict[str, float] = {}
    for name in names:
        radius = by_group.get(groups[name])
        if name not in new and radius is not None:
            out[name] = float(radius)
    return out
