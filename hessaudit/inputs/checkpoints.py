"""Read checkpoints into a flat ``{name: tensor}`` dict, the way timm's
``timm.models.load_state_dict`` does it, whatever the format.

* ``.safetensors`` files (:mod:`hessaudit.inputs.checkpoint_safetensors`): the header's
  ``__metadata__`` becomes :attr:`Checkpoint.metadata`, with values that are JSON decoded;
  :func:`save_checkpoint` writes them.
* ``.pt``, ``.pth``, ``.bin`` and ``.ckpt`` files (:mod:`hessaudit.inputs.checkpoint_torch`):
  ``torch.load(weights_only=True)`` and nothing else; hessaudit never unpickles arbitrary Python
  objects.
* Any other extension is sniffed: a torch zip archive or pickle, else a safetensors header.

Containers (``state_dict_ema``, ``model_ema``, ``state_dict``, ``model``) are unwrapped and
wrapper prefixes (``module.``, ``_orig_mod.``, ``_fsdp_wrapped_module.``, and ``model.`` when
every name has it) stripped (:mod:`hessaudit.inputs.checkpoint_names`); the key used is
recorded in :attr:`Checkpoint.container`, the prefixes in :attr:`Checkpoint.stripped`. Every
tensor must be dense and real, every floating-point tensor finite, and the file's
:class:`~hessaudit.inputs.file_record.FileRecord` (path, SHA-256, size) is kept.

**Adding a layout** (a Hugging Face model folder, sharded safetensors with an index, a PEFT
adapter) is one new module and one entry in :data:`FORMATS` (and its import). The module defines
``claims(path) -> bool`` (reading at most the first bytes) and ``read(path, map_location) ->
(tensors, container, metadata)``; the entry is ``CheckpointFormat("name", module.claims,
module.read)``, before any format that would also claim its files. A layout stored as a folder
sets ``folder=True`` (folders are otherwise refused) and gives ``record``, the
:class:`~hessaudit.inputs.file_record.FileRecord` of what it reads. Unwrapping, prefix stripping
and the tensor checks above apply to every format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hessaudit._messages import oneline
from hessaudit.errors import HessauditError
from hessaudit.inputs.checkpoint_names import (
    CONTAINER_KEYS,
    WRAPPER_PREFIXES,
    strip_prefixes,
    strip_with_check,
)
from hessaudit.inputs.checkpoint_safetensors import (
    SAFETENSORS_SUFFIXES,
    has_safetensors_suffix,
    looks_like_safetensors,
    read_safetensors,
    save_checkpoint,
)
from hessaudit.inputs.checkpoint_torch import TORCH_SUFFIXES, looks_like_torch, read_torch
from hessaudit.inputs.file_record import FileRecord, file_record, sha256_file
from hessaudit.inputs.guard import check_tensor_views, open_regular

__all__ = [
    "CONTAINER_KEYS",
    "FORMATS",
    "SAFETENSORS_SUFFIXES",
    "TORCH_SUFFIXES",
    "WRAPPER_PREFIXES",
    "Checkpoint",
    "CheckpointFormat",
    "FileRecord",
    "load_checkpoint",
    "save_checkpoint",
    "sha256_file",
    "strip_prefixes",
]

#: What a format's reader returns: the tensors by name, the container key they were found under
#: (None for none), and the metadata stored beside them.
Unpacked = tuple[dict[str, torch.Tensor], str | None, dict[str, Any]]


@dataclass(frozen=True)
class CheckpointFormat:
    """One way checkpoints are stored: ``claims(path)`` says whether a file (a folder, for a
    ``folder`` layout) is in it; ``read(path, map_location)`` unpacks it; ``record(path)`` says
    what exactly was read (for a file: its path, SHA-256 and size)."""

    name: str
    claims: Callable[[Path], bool]
    read: Callable[[Path, str | torch.device], Unpacked]
    folder: bool = False
    record: Callable[[Path], FileRecord] = field(default=file_record)


#: The formats, tried in order; the first that claims the path reads it. A ``.safetensors``
#: extension decides; otherwise the file's first bytes (torch's zip or pickle, then a
#: safetensors header). Register a new layout here.
FORMATS: tuple[CheckpointFormat, ...] = (
    CheckpointFormat("safetensors", has_safetensors_suffix, read_safetensors),
    CheckpointFormat("torch", looks_like_torch, read_torch),
    CheckpointFormat("safetensors", looks_like_safetensors, read_safetensors),
)


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A loaded checkpoint: flat tensors, the file's record, and what was unwrapped.

    ``container`` is the key the state dict was found under (``None`` for a bare state dict);
    ``metadata`` holds the safetensors header metadata or the scalars stored beside the state
    dict in a torch file; ``stripped`` lists the wrapper prefixes removed from names.
    """

    tensors: dict[str, torch.Tensor]
    record: FileRecord
    container: str | None
    metadata: dict[str, Any]
    stripped: tuple[str, ...] = field(default=())

    @property
    def num_params(self) -> int:
        """Total number of elements over all tensors (buffers included)."""
        return sum(t.numel() for t in self.tensors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.record.to_dict(),
            "container": self.container,
            "stripped_prefixes": list(self.stripped),
            "num_tensors": len(self.tensors),
            "num_elements": self.num_params,
            "metadata": _jsonable(self.metadata),
        }


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Load a checkpoint file into a flat, cleaned ``{name: tensor}`` dict.

    Args:
        path: A ``.safetensors``, ``.pt``, ``.pth``, ``.bin`` or ``.ckpt`` file (other
            extensions are sniffed), or a Hugging Face model directory
            (:mod:`hessaudit.inputs.hf_checkpoints`, which reads, validates and records the
            directory's files as one checkpoint).
        map_location: Device the tensors are loaded to.

    Raises:
        HessauditError: the file is missing, empty, unreadable, corrupt, holds non-tensor
            Python objects, holds no tensors, or holds NaN/Inf values.
    """
    p = Path(path)
    if p.is_dir() and not any(fmt.folder and fmt.claims(p) for fmt in FORMATS):
        return _load_model_dir(p, map_location)
    fmt = _find_format(p)
    record = fmt.record(p)
    tensors, container, metadata = fmt.read(p, map_location)
    if not tensors:
        raise HessauditError(f"{p}: no tensors found in the checkpoint")
    check_tensor_views(tensors, record.size, f"checkpoint {p}")
    tensors, stripped = strip_with_check(tensors, p)
    _check_finite(tensors, p)
    return Checkpoint(
        tensors=tensors, record=record, container=container, metadata=metadata, stripped=stripped
    )


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _find_format(p: Path) -> CheckpointFormat:
    """The first format of :data:`FORMATS` that claims ``p``: a folder that a ``folder`` layout
    claims, else a readable, non-empty regular file.

    Raises:
        HessauditError: ``p`` is missing, a folder no layout claims, a FIFO or device,
            unreadable, empty, or in no known format.
    """
    if not p.exists():
        raise HessauditError(f"checkpoint {p} does not exist")
    if p.is_dir():
        for fmt in FORMATS:
            if fmt.folder and fmt.claims(p):
                return fmt
        raise HessauditError(
            f"checkpoint {p} is a directory, not a file",
            hint="give the .safetensors / .pt file inside it",
        )
    try:  # only a regular file: a FIFO or a device would block or never end
        with open_regular(p, "checkpoint") as fh:
            fh.read(1)
    except OSError as exc:
        raise HessauditError(f"checkpoint {p} cannot be read: {oneline(exc)}") from None
    if p.stat().st_size == 0:
        raise HessauditError(f"checkpoint {p} is empty (0 bytes)")
    for fmt in FORMATS:
        if not fmt.folder and fmt.claims(p):
            return fmt
    suffix = p.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        raise HessauditError(
            f"checkpoint {p} is not a PyTorch checkpoint (neither a zip archive nor a pickle); "
            "it may be truncated or corrupt"
        )
    raise HessauditError(
        f"checkpoint {p}: unknown format (extension {suffix or '(none)'!r}; neither a "
        "safetensors header nor a PyTorch zip/pickle)",
        hint="use a .safetensors, .pt, .pth, .bin or .ckpt file",
    )


def _check_supported(name: str, tensor: torch.Tensor, p: Path) -> None:
    """Refuse tensors the audit cannot take as weights: complex (loading would drop the
    imaginary part), sparse or other non-dense layouts, quantized."""
    if tensor.layout != torch.strided:
        raise HessauditError(
            f"checkpoint {p}: tensor {name!r} is sparse ({tensor.layout}); hessaudit reads dense "
            "weights only",
            hint="save dense tensors: {k: v.to_dense() for k, v in state.items()}",
        )
    if tensor.is_complex():
        raise HessauditError(
            f"checkpoint {p}: tensor {name!r} is complex ({tensor.dtype}); hessaudit audits "
            "real-valued weights only",
            hint="the model must have real weights; a complex layer cannot be audited",
        )
    if tensor.is_quantized:
        raise HessauditError(
            f"checkpoint {p}: tensor {name!r} is quantized ({tensor.dtype}); hessaudit audits "
            "floating-point weights only",
            hint="audit the float checkpoint the quantized one was made from",
        )


def _check_finite(tensors: Mapping[str, torch.Tensor], p: Path) -> None:
    for name, tensor in tensors.items():
        _check_supported(name, tensor, p)
        floating = tensor.is_floating_point()
        if floating and tensor.numel() and not _all_finite(tensor):
            kind = "NaN" if bool(torch.isnan(tensor.float()).any()) else "Inf"
            raise HessauditError(
                f"checkpoint {p}: tensor {name!r} contains {kind} values",
                hint="the training run probably diverged; use an earlier checkpoint",
            )


def _all_finite(tensor: torch.Tensor) -> bool:
    try:
        return bool(torch.isfinite(tensor).all())
    except (RuntimeError, NotImplementedError):  # float8 and other dtypes without the kernel
        return bool(torch.isfinite(tensor.to(torch.float32)).all())


def _load_model_dir(p: Path, map_location: str | torch.device) -> Checkpoint:
    from hessaudit.inputs.hf_checkpoints import read_model_dir

    read = read_model_dir(p, map_location=map_location)
    tensors, stripped = strip_with_check(read.tensors, p)
    _check_finite(tensors, p)
    record = FileRecord(path=read.path, sha256=read.sha256, size=read.size)
    return Checkpoint(
        tensors=tensors, record=record, container=None, metadata=read.metadata, stripped=stripped
    )
