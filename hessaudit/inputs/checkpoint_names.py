"""Where the weights sit inside a checkpoint: containers and wrapper prefixes.

Containers are unwrapped in timm's order of preference: ``state_dict_ema``, ``model_ema`` (the
EMA weights), then ``state_dict``, then ``model`` (:data:`CONTAINER_KEYS`); scalars stored beside
the state dict (``epoch``, ``arch``, ``metric``...) are kept as metadata. Wrapper prefixes are
stripped from every name: ``module.`` (DataParallel / DDP), ``_orig_mod.`` (``torch.compile``)
and ``_fsdp_wrapped_module.`` (FSDP), in any order, and ``model.`` when *every* name has it
(PyTorch Lightning); two names that become one are an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hessaudit.errors import HessauditError

__all__ = [
    "COMMON_PREFIXES",
    "CONTAINER_KEYS",
    "WRAPPER_PREFIXES",
    "strip_prefixes",
    "strip_with_check",
    "unwrap_container",
]

#: Container keys, in order of preference (timm's ``load_state_dict`` with ``use_ema=True``).
CONTAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
#: Prefixes added by wrappers, stripped from the start of every name wherever present.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.")
#: Prefix stripped only when every name has it (PyTorch Lightning's ``self.model``).
COMMON_PREFIXES = ("model.",)


def unwrap_container(
    obj: Any, p: Path
) -> tuple[dict[str, torch.Tensor], str | None, dict[str, Any]]:
    """The state dict inside a loaded torch object, the container key it was under (None for a
    bare state dict) and the scalars stored beside it; anything else that is not a tensor is
    refused, naming the entry."""
    if isinstance(obj, torch.Tensor):
        raise HessauditError(
            f"checkpoint {p} holds a single tensor, not a state dict",
            hint="save a {name: tensor} dict such as model.state_dict()",
        )
    if not isinstance(obj, Mapping):
        raise HessauditError(
            f"checkpoint {p} holds a {type(obj).__name__}, not a state dict "
            "(a dict of name -> tensor)"
        )
    container = None
    for key in CONTAINER_KEYS:
        if isinstance(obj.get(key), Mapping):
            container = key
            break
    metadata: dict[str, Any] = {}
    if container is None:
        state: dict[str, torch.Tensor] = {}
        for key, value in obj.items():
            if isinstance(value, torch.Tensor):
                state[str(key)] = value
            elif value is None or isinstance(value, (bool, int, float, str)):
                if value is not None:
                    metadata[str(key)] = value  # epoch, step, arch... beside a state dict
            else:
                raise HessauditError(
                    f"checkpoint {p}: entry {key!r} is a {type(value).__name__}, not a tensor "
                    f"(no container key {', '.join(CONTAINER_KEYS)} was found)"
                )
        return state, None, metadata
    for key, value in obj.items():
        if key != container and isinstance(value, (bool, int, float, str)):
            metadata[str(key)] = value
    state = {}
    for key, value in obj[container].items():
        if not isinstance(value, torch.Tensor):
            raise HessauditError(
                f"checkpoint {p}: entry {key!r} of {container!r} is a {type(value).__name__}, "
                "not a tensor"
            )
        state[str(key)] = value
    return state, container, metadata


def strip_prefixes(names: list[str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """Map each name to its name without wrapper prefixes; also return the prefixes removed.

    ``module.``, ``_orig_mod.`` and ``_fsdp_wrapped_module.`` are removed from the start of
    each name, repeatedly and in any order; ``model.`` only when every (cleaned) name has it.
    """
    mapping: dict[str, str] = {}
    removed: list[str] = []
    for name in names:
        clean = name
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if clean.startswith(prefix) and len(clean) > len(prefix):
                    clean = clean[len(prefix) :]
                    changed = True
                    if prefix not in removed:
                        removed.append(prefix)
        mapping[name] = clean
    for prefix in COMMON_PREFIXES:
        values = list(mapping.values())
        if values and all(v.startswith(prefix) and len(v) > len(prefix) for v in values):
            mapping = {k: v[len(prefix) :] for k, v in mapping.items()}
            removed.append(prefix)
    return mapping, tuple(removed)


def strip_with_check(
    tensors: dict[str, torch.Tensor], p: Path
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """``tensors`` renamed by :func:`strip_prefixes`, and the prefixes removed; refuse two names
    that would become one."""
    mapping, removed = strip_prefixes(list(tensors))
    if not removed:
        return tensors, ()
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for name, tensor in tensors.items():
        clean = mapping[name]
        if clean in out:
            raise HessauditError(
                f"checkpoint {p}: {origin[clean]!r} and {name!r} both become {clean!r} once "
                f"the wrapper prefixes {', '.join(removed)} are removed"
            )
        out[clean] = tensor
        origin[clean] = name
    return out, removed
