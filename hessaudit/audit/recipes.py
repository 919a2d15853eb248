"""Recipes: named, complete descriptions of *which* measure an audit computes.

``theorem`` (the default) is the definition of Theorem 2.1 as documented in docs/measure.md:
every option keeps its own meaning and default.

``released`` reproduces ``exps_on_image_datasets/compute_hessian_measures.py`` of the paper's
released code (Ju, Li & Zhang, ICML 2022; its CNN branch). It differs from the theorem in five
ways, all set together by ``--recipe released``:

1. examples: a permutation of the held-out set (``--eval-data``; ``--data`` when none is given),
   drawn with ``torch.randperm`` from a generator seeded by ``--seed``, cut to the first
   ``b * (floor(S / b) + 1)`` examples (the released loop stops once it has seen *more* than
   S = ``--samples`` examples, default 100) and processed in consecutive batches of b = 4;
2. layers: the weight of every module that is exactly ``torch.nn.Conv2d`` and whose module name
   contains ``"conv"`` (so ResNet ``downsample`` convolutions are left out), plus the weight of
   every exactly-``torch.nn.Linear`` module that is the classifier (hessaudit's
   :func:`~hessaudit.inputs.models.classifier_names`) or whose name contains ``"pred_head"``;
   no other Linear, no bias, no normalization parameter;
3. head: its distance vector is the fine-tuned weight itself, v = W, even when the pretrained
   checkpoint has a head of the same shape;
4. form: the cross term ``v_i^T (H v)_i`` read out of one Hessian-vector product along all the
   measured layers at once (``--form cross``);
5. reduction: the per-layer maximum over the batches of the batch-mean loss's form
   (``--reduce batch-max`` with ``--batch-size 4``).

A recipe *owns* the options it sets: giving one of them explicitly with another value is an
error naming both (``--recipe released`` with ``--form positive``); giving the same value is
allowed. ``--samples`` and ``--seed`` keep working under ``released`` (they are the released
script's ``--sample_size`` and the permutation's seed).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from hessaudit.errors import HessauditError

if TYPE_CHECKING:
    from torch import nn

    from hessaudit.audit.layers import Layer
    from hessaudit.inputs.data import Dataset

# An AuditRequest (hessaudit.audit.request builds every request through resolve_request, so this
# module, below it, knows a request only by its field names).
Request = TypeVar("Request")

__all__ = [
    "RECIPES",
    "Recipe",
    "audit_examples",
    "get_recipe",
    "resolve_request",
    "select_layers",
]

#: The CLI flag of each request field a recipe may set (for error messages).
_FLAGS = {
    "form": "--form",
    "reduce": "--reduce",
    "batch_size": "--batch-size",
    "include": "--include",
    "exclude": "--exclude",
    "include_bias": "--include-bias",
    "include_norm": "--include-norm",
    "exclude_new_head": "--exclude-new-head",
}


@dataclass(frozen=True)
class Recipe:
    """What a recipe sets.

    ``sets`` maps :class:`~hessaudit.audit.request.AuditRequest` fields to the value the recipe
    forces (an explicit other value is a conflict). ``layers`` is ``"selected"`` (the selection
    flags decide) or ``"released"`` (rule 2 and 3 of the module docstring). ``examples`` is
    ``"audit-data"`` (``--data``, or a seeded ``--samples`` subset of it) or ``"released"``
    (rule 1). ``default_samples`` replaces an unset ``--samples``.
    """

    name: str
    description: str
    sets: Mapping[str, Any] = field(default_factory=dict)
    layers: str = "selected"
    examples: str = "audit-data"
    default_samples: int | None = None


RECIPES: dict[str, Recipe] = {
    "theorem": Recipe(
        name="theorem",
        description="Theorem 2.1's definition; every option as given",
    ),
    "released": Recipe(
        name="released",
        description="the paper's released compute_hessian_measures.py",
        sets={
            "form": "cross",
            "reduce": "batch-max",
            "batch_size": 4,
            # the released layer rule replaces the selection flags; the cross term of a layer
            # depends on every other measured layer, so no flag may add or remove one
            "include": (),
            "exclude": (),
            "include_bias": False,
            "include_norm": False,
            "exclude_new_head": False,
        },
        layers="released",
        examples="released",
        default_samples=100,
    ),
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; :class:`HessauditError` naming ``--recipe`` otherwise."""
    recipe = RECIPES.get(name)
    if recipe is None:
        raise HessauditError(f"--recipe {name!r}: must be one of {', '.join(RECIPES)}")
    return recipe


#: Request fields of the layer selection: a recipe that sets them chooses the layers itself.
_LAYER_FIELDS = ("include", "exclude", "include_bias", "include_norm", "exclude_new_head")


def _show(field_name: str, value: Any) -> str:
    flag = _FLAGS[field_name]
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    if isinstance(value, (tuple, list)):
        return " ".join(f"{flag} {item!r}" for item in value) or f"no {flag}"
    return f"{flag} {value}"


def resolve_request(request: Request, explicit: Collection[str] | None = None) -> Request:
    """``request`` (an :class:`~hessaudit.audit.request.AuditRequest`) with its recipe's
    settings applied.

    ``explicit`` names the request fields the user gave (the CLI reads them from the command
    line); when None, every field whose value differs from the request's default counts as
    given. A given field whose value differs from the recipe's is an error naming the
    recipe's setting and the conflicting flag. Idempotent: resolving a resolved request
    returns it unchanged.
    """
    recipe = get_recipe(request.recipe)
    defaults = {f.name: f.default for f in dataclasses.fields(request)}
    if explicit is None:
        explicit = {name for name, default in defaults.items() if getattr(request, name) != default}
    changes: dict[str, Any] = {}
    for name, value in recipe.sets.items():
        given = getattr(request, name)
        same = tuple(given) == tuple(value) if isinstance(value, tuple) else given == value
        if name in explicit and not same:
            what = (
                "chooses the layers and the head rule itself"
                if name in _LAYER_FIELDS and recipe.layers != "selected"
                else f"sets {_show(name, value)}"
            )
            raise HessauditError(
                f"--recipe {recipe.name} {what}; it conflicts with {_show(name, given)}: "
                "drop one of them"
            )
        changes[name] = value
    if request.samples is None and recipe.default_samples is not None:
        changes["samples"] = recipe.default_samples
    return dataclasses.replace(request, **changes)


def _released_layer_names(model: nn.Module) -> tuple[set[str], set[str]]:
    """(conv weights, head weights) that the released code measures (module docstring, rule 2)."""
    from torch import nn

    from hessaudit.inputs.models import classifier_names

    classifier = set(classifier_names(model))
    convs: set[str] = set()
    heads: set[str] = set()
    for prefix, module in model.named_modules():
        weight = f"{prefix}.weight" if prefix else "weight"
        # exact types, as the released code compares type(module) ==
        if type(module) is nn.Conv2d and "conv" in prefix:
            convs.add(weight)
        elif type(module) is nn.Linear and ("pred_head" in prefix or weight in classifier):
            heads.add(weight)
    return convs, heads


def select_layers(recipe: Recipe, model: nn.Module, layers: Sequence[Layer]) -> list[Layer]:
    """Apply the recipe's layer rule to the paired ``layers`` (in their order).

    Under ``released`` only the layers of rule 2 stay, and each head is measured from zero
    (rule 3: ``pretrained`` None, marked ``is_new_head``).
    """
    from hessaudit.audit.layers import Layer

    if recipe.layers == "selected":
        return list(layers)
    convs, heads = _released_layer_names(model)
    chosen = []
    for layer in layers:
        if layer.name in heads:
            chosen.append(Layer(layer.name, layer.shape, layer.numel, True, None, layer.finetuned))
        elif layer.name in convs:
            chosen.append(layer)
    if not chosen:
        raise HessauditError(
            f"--recipe {recipe.name} selects no layer: the model has no torch.nn.Conv2d whose "
            "name contains 'conv' and no torch.nn.Linear classifier",
            hint="use --recipe theorem with --include / --exclude to choose layers",
        )
    return chosen


def audit_examples(
    recipe: Recipe,
    *,
    train: Dataset,
    held_out: Dataset | None,
    samples: int | None,
    batch_size: int,
    seed: int,
) -> tuple[Dataset, str] | None:
    """The recipe's own audit examples and where they came from (``"eval_data"`` or
    ``"data"``), or None when the recipe leaves them to ``--data`` / ``--samples``.

    Under ``released`` (rule 1): the first ``b * (floor(S / b) + 1)`` entries (or all) of
    ``torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))``, in that
    order, with b = ``batch_size`` and S = ``samples``.
    """
    import torch

    if recipe.examples != "released":
        return None
    source, where = (held_out, "eval_data") if held_out is not None else (train, "data")
    if held_out is None:
        warnings.warn(
            f"--recipe {recipe.name} measures on the held-out set, as the released code does; "
            "no --eval-data was given, so it uses a permutation of --data",
            UserWarning,
            stacklevel=2,
        )
    assert samples is not None  # resolve_request sets the recipe's default
    count = min(len(source), batch_size * (samples // batch_size + 1))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(source), generator=generator)[:count]
    return source.subset(order), where
