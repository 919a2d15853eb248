"""Hugging Face model directories as checkpoints: one file, shards with an index, or a .bin.

A directory given as PRETRAINED or FINETUNED (or ``finetune --pretrained``) is read as what
``save_pretrained`` writes, in the order transformers' ``from_pretrained`` looks for it:

1. ``model.safetensors``;
2. ``model.safetensors.index.json`` and the shards it names
   (``model-0000K-of-0000N.safetensors``);
3. ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``, nothing unpickled);
4. ``pytorch_model.bin.index.json`` and its ``.bin`` shards.

Every file read is a regular file inside the directory (:mod:`hessaudit.inputs.hf_files`: an
index may name shards only by a plain file name, links stay inside). An index must map every
tensor to one listed shard, each shard must exist and hold exactly the tensors the index gives
it; a tensor found in two shards, or missing from its shard, is an error. Legacy names
``LayerNorm.gamma`` / ``LayerNorm.beta`` (old BERT files) are renamed ``LayerNorm.weight`` /
``LayerNorm.bias``.

**Names.** transformers 5 keeps the files of some models in their original layout and renames
on load (ViT's ``encoder.layer.0.attention.attention.query`` is ``layers.0.attention.q_proj``
in memory). When the directory has a ``config.json`` of a classifier transformers knows, its
tensors are renamed as ``from_pretrained`` would, to the names of that model in memory
(:func:`hessaudit.inputs.hf_models.runtime_names`; a base model's names gain the classifier's
prefix, ``embeddings.*`` -> ``bert.embeddings.*``), so that both checkpoints, an adapter and
the model built by ``--model`` agree. A conversion that would need tensor operations (fused
``qkv`` split, ...) is refused. Without a ``config.json``, or without transformers, the names
are used as stored.

The record of a directory (:class:`DirRead`): ``path`` the directory, ``size`` the bytes of the
files read, ``sha256`` the SHA-256 of the manifest ``"NAME SHA256 SIZE\\n"`` over those files
in reading order; ``metadata`` lists them (``hf_layout``, ``hf_files``, and ``hf_renamed``, the
number of names changed, when any).

A directory holding ``adapter_config.json`` is a PEFT adapter: it has no weights of its own and
is read only as FINETUNED, on top of PRETRAINED (:mod:`hessaudit.inputs.lora`).
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hessaudit._messages import few, oneline
from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import check_tensor_views, check_zip_archive, open_regular
from hessaudit.inputs.hf_files import (
    MODEL_CONFIG,
    dir_member,
    files_record,
    is_adapter_dir,
    read_json,
)

__all__ = [
    "DirRead",
    "read_model_dir",
    "read_safetensors_file",
    "read_torch_file",
]

_SINGLE_ST = "model.safetensors"
_INDEX_ST = "model.safetensors.index.json"
_SINGLE_BIN = "pytorch_model.bin"
_INDEX_BIN = "pytorch_model.bin.index.json"
#: Most shards an index may name (the largest public models have a few hundred).
MAX_SHARDS = 10_000
_LEGACY = ((".LayerNorm.gamma", ".LayerNorm.weight"), (".LayerNorm.beta", ".LayerNorm.bias"))


@dataclass(frozen=True, eq=False)
class DirRead:
    """What a model directory held: flat tensors, the directory's record and its file list."""

    tensors: dict[str, torch.Tensor]
    path: str
    sha256: str
    size: int
    metadata: dict[str, Any]


def read_safetensors_file(
    path: Path, what: str, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file (header metadata ignored), views checked."""
    from safetensors import safe_open

    with open_regular(path, what) as fh:
        size = os.fstat(fh.fileno()).st_size
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as fh:
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    except Exception as exc:
        raise HessauditError(
            f"{what} {path} is not a valid safetensors file (truncated or corrupt?): "
            f"{oneline(exc)}"
        ) from None
    check_tensor_views(tensors, size, f"{what} {path}")
    return tensors


def read_torch_file(
    path: Path, what: str, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Every tensor of a torch state-dict file, read with ``weights_only=True``."""
    check_zip_archive(path, f"{what} {path}")
    try:
        with warnings.catch_warnings():
            # a legacy pickle of another protocol: torch warns, then loads it or refuses it
            warnings.filterwarnings("ignore", message=r".*pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise HessauditError(
            f"{what} {path} contains non-tensor Python objects and was not loaded (hessaudit "
            "reads torch files with weights_only=True and never unpickles arbitrary objects)",
            hint="convert the directory to safetensors (save_pretrained does by default)",
        ) from None
    except Exception as exc:
        raise HessauditError(
            f"{what} {path} could not be read as a PyTorch file (truncated or corrupt?): "
            f"{oneline(exc)}"
        ) from None
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise HessauditError(f"{what} {path} is not a state dict (a dict of name -> tensor)")
    tensors = dict(obj)
    check_tensor_views(tensors, path.stat().st_size, f"{what} {path}")
    return tensors


def _read_index(folder: Path, name: str) -> dict[str, str]:
    """The index's ``weight_map`` (tensor name -> shard file name), checked."""
    what = f"checkpoint index {folder / name}"
    index = read_json(dir_member(folder, name, "checkpoint"), "checkpoint index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise HessauditError(f"{what} has no \"weight_map\" object of tensor name -> shard file")
    bad = [k for k, v in weight_map.items() if not isinstance(v, str)]
    if bad:
        raise HessauditError(f"{what}: the shard of {few(bad, 3)} is not a file name")
    shards = sorted(set(weight_map.values()))
    if len(shards) > MAX_SHARDS:
        raise HessauditError(f"{what} names {len(shards)} shards; at most {MAX_SHARDS} are read")
    for shard in shards:
        dir_member(folder, shard, what)
    return weight_map


def _read_shards(
    folder: Path, index_name: str, map_location: str | torch.device
) -> tuple[dict[str, torch.Tensor], list[str]]:
    weight_map = _read_index(folder, index_name)
    what = f"checkpoint index {folder / index_name}"
    shards = list(dict.fromkeys(weight_map.values()))
    tensors: dict[str, torch.Tensor] = {}
    where: dict[str, str] = {}
    for shard in shards:
        path = folder / shard
        if shard.endswith(".safetensors"):
            got = read_safetensors_file(path, "checkpoint shard", map_location)
        else:
            got = read_torch_file(path, "checkpoint shard", map_location)
        for name, tensor in got.items():
            if name in where:
                raise HessauditError(
                    f"checkpoint {folder}: tensor {name!r} is in two shards, {where[name]} and "
                    f"{shard}",
                    hint="the shards do not belong to one checkpoint",
                )
            listed = weight_map.get(name)
            if listed != shard:
                place = "not in the index" if listed is None else f"listed in {listed}"
                raise HessauditError(f"{what}: shard {shard} holds {name!r}, {place}")
            tensors[name] = tensor
            where[name] = shard
    missing = [name for name in weight_map if name not in tensors]
    if missing:
        raise HessauditError(
            f"{what}: {len(missing)} tensors are missing from their shards: {few(missing, 3)}",
            hint="a shard is truncated or from another checkpoint",
        )
    return tensors, shards


def _rename_legacy(tensors: dict[str, torch.Tensor], folder: Path) -> tuple[dict, int]:
    out: dict[str, torch.Tensor] = {}
    renamed = 0
    for name, tensor in tensors.items():
        new = name
        for old, repl in _LEGACY:
            if name.endswith(old):
                new = name[: -len(old)] + repl
        if new != name:
            renamed += 1
            if new in tensors:
                raise HessauditError(
                    f"checkpoint {folder} holds both {name!r} and {new!r} (the legacy and the "
                    "current name of one tensor)"
                )
        out[new] = tensor
    return out, renamed


def _layout(folder: Path) -> tuple[str, str]:
    for layout, name in (
        ("safetensors", _SINGLE_ST), ("safetensors-sharded", _INDEX_ST),
        ("torch", _SINGLE_BIN), ("torch-sharded", _INDEX_BIN),
    ):
        if os.path.lexists(folder / name):
            return layout, name
    if is_adapter_dir(folder):
        raise HessauditError(
            f"checkpoint {folder} is a PEFT adapter directory; an adapter holds only the "
            "low-rank update, not a model's weights",
            hint="give it as FINETUNED with its base model's checkpoint as PRETRAINED",
        )
    raise HessauditError(
        f"checkpoint {folder} is a directory without {_SINGLE_ST}, {_INDEX_ST} or {_SINGLE_BIN}, "
        "so not a Hugging Face model directory",
        hint="give the .safetensors / .pt file inside it, or a save_pretrained directory",
    )


def read_model_dir(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> DirRead:
    """Read a ``save_pretrained`` directory's weights (module docstring); raise
    :class:`HessauditError` for anything but a complete, self-contained one."""
    folder = Path(path).expanduser()
    layout, name = _layout(folder)
    if layout.endswith("sharded"):
        tensors, names = _read_shards(folder, name, map_location)
        names = [name, *names]
    else:
        member = dir_member(folder, name, "checkpoint")
        if layout == "safetensors":
            tensors = read_safetensors_file(member, "checkpoint", map_location)
        else:
            tensors = read_torch_file(member, "checkpoint", map_location)
        names = [name]
    if not tensors:
        raise HessauditError(f"checkpoint {folder}: no tensors found")
    tensors, renamed = _rename_legacy(tensors, folder)
    if os.path.lexists(folder / MODEL_CONFIG):
        from hessaudit.inputs.hf_models import runtime_names

        tensors, converted = runtime_names(folder, tensors)
        renamed += converted
    digest, size, files = files_record(folder, names)
    metadata: dict[str, Any] = {"hf_layout": layout, "hf_files": files}
    if renamed:
        metadata["hf_renamed"] = renamed
    return DirRead(tensors=tensors, path=str(folder), sha256=digest, size=size, metadata=metadata)
