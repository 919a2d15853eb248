"""AdamW's weight-decay groups and the per-step linear schedule.

**Weight decay** (``--optimizer adamw`` with ``--weight-decay`` > 0): decoupled weight decay is
applied to every trainable parameter except

* biases (a name ending in ``bias``),
* the parameters of normalization layers (LayerNorm, RMSNorm, BatchNorm, GroupNorm...: the
  ``norm`` group of :func:`hessaudit.audit.groups.layer_groups`, a module whose class name
  holds ``Norm``), and
* any other parameter with fewer than 2 dimensions (timm's rule: layer-scale vectors, scalars).

On BERT and RoBERTa this is exactly the seed's name rule (no decay where the name holds
``bias`` or ``LayerNorm.weight``, a test checks), and it stays right for models whose
normalization layers are named otherwise (DistilBERT's ``sa_layer_norm``, GPT-2's ``ln_1``).
The two groups are ``[decayed, not decayed]``, each in ``named_parameters`` order. With no
weight decay the optimizer keeps one group (the same numbers and the same ``state.pt`` layout as
before the groups existed), and Adam's coupled L2 decay and SGD's are left as they were (on
every parameter).

**Linear schedule**: :func:`linear_schedule`, a ``LambdaLR`` of
:func:`hessaudit.robust.text_recipe.linear_warmup_factor`, stepped after every optimizer step.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from hessaudit.robust.text_recipe import linear_warmup_factor

__all__ = ["decay_parameter_groups", "linear_schedule", "no_decay_names"]


def no_decay_names(model: nn.Module) -> list[str]:
    """The trainable parameters AdamW does not decay (module docstring), in model order."""
    from hessaudit.audit.groups import layer_groups

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    target = getattr(model, "hf_model", model)  # a TextClassifier: the wrapped model's modules
    groups = layer_groups(target, [n for n, _ in named])
    return [n for n, p in named if p.ndim < 2 or n.endswith("bias") or groups[n] == "norm"]


def decay_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """``[{"params": decayed, "weight_decay": weight_decay}, {"params": rest,
    "weight_decay": 0.0}]`` over the trainable parameters (empty groups left out)."""
    skip = set(no_decay_names(model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n not in skip], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n in skip], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def linear_schedule(
    optimizer: torch.optim.Optimizer, *, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at step ``total``."""
    factor = functools.partial(linear_warmup_factor, warmup=warmup, total=total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
