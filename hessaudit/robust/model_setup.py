"""Model setup of a fine-tuning run: build the model with ``k`` classes, load every
pretrained tensor whose name and shape match, seed the new ones, and the optimizer and schedule.

:func:`build_run_model` serves the fine-tuning run and the first models of the noise-matrix
estimation alike (each with its own initialization seed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from hessaudit.errors import HessauditError
from hessaudit.robust.config import FinetuneConfig


def _init_new_parameters_(model: nn.Module, names: list[str], generator: torch.Generator) -> None:
    """Seeded re-initialization of the tensors that did not come from the checkpoint, with the
    schemes torch's own layers use (Kaiming-uniform with a = sqrt(5) for weights, uniform
    +-1/sqrt(fan_in) for biases, ones/zeros for normalization)."""
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    with torch.no_grad():
        for name in names:
            if name not in params:
                continue
            p = params[name]
            module_name, _, attr = name.rpartition(".")
            module = modules.get(module_name)
            if p.ndim >= 2:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=generator)
            elif isinstance(module, norm_types):
                if attr == "weight":
                    p.fill_(1.0)
                else:
                    p.zero_()
            else:
                weight = getattr(module, "weight", None)
                if isinstance(weight, torch.Tensor) and weight.ndim >= 2:
                    fan_in = weight[0].numel()
                else:
                    fan_in = max(p.numel(), 1)
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(p, -bound, bound, generator=generator)


@dataclass
class ModelBuild:
    """The built model and which of its tensors came from the checkpoint (``loaded``), which are
    new (``new``: seeded), and which checkpoint tensors it has no use for (``unused``)."""

    model: nn.Module
    loaded: list[str]
    new: list[str]
    unused: list[str]


def build_run_model(
    config: FinetuneConfig,
    num_classes: int,
    pretrained: Mapping[str, torch.Tensor],
    *,
    device: torch.device,
    init_seed: int,
) -> ModelBuild:
    """``config.model`` with ``num_classes`` outputs on ``device``: every ``pretrained`` tensor
    whose name and shape match is loaded, the others are initialized from ``init_seed``."""
    from hessaudit.inputs.models import build_model

    model = build_model(config.model, num_classes=num_classes, allow_hub=config.allow_hub)
    state = model.state_dict()
    matched = {
        name: t
        for name, t in pretrained.items()
        if name in state and tuple(state[name].shape) == tuple(t.shape)
    }
    param_names = [n for n, _ in model.named_parameters()]
    if not any(n in matched for n in param_names):
        raise HessauditError(
            f"--pretrained {config.pretrained}: none of its tensors matches the model "
            f"{config.model} by name and shape",
            hint="is it a checkpoint of this architecture?",
        )
    model.load_state_dict(matched, strict=False)
    new = [n for n in state if n not in matched and not n.endswith("num_batches_tracked")]
    unused = [n for n in pretrained if n not in matched]
    gen = torch.Generator(device="cpu").manual_seed(init_seed)
    _init_new_parameters_(model, new, gen)
    return ModelBuild(model=model.to(device), loaded=list(matched), new=new, unused=unused)


def make_optimizer(config: FinetuneConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``config.optimizer`` (Adam, AdamW or SGD with momentum) over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def make_scheduler(
    config: FinetuneConfig, optimizer: torch.optim.Optimizer, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``config.schedule`` over ``epochs`` epochs (stepped once per epoch); None for ``none``."""
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.lr_step, gamma=config.lr_decay
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return None
