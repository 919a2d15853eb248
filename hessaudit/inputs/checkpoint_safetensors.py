"""safetensors checkpoints: read (:func:`read_safetensors`) and written (:func:`save_checkpoint`).

The header's ``__metadata__`` (a string-to-string map) becomes the checkpoint's metadata, with
values that are JSON decoded. safetensors files have no tensor order of their own (names are
stored sorted); files written by :func:`save_checkpoint` keep the order they were given in,
through a metadata entry (:data:`ORDER_KEY`) that :func:`read_safetensors` reads and removes.
A file is safetensors when its extension says so (:func:`has_safetensors_suffix`) or, sniffed,
when it starts with a plausible header (:func:`looks_like_safetensors`).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hessaudit._atomic import atomic_path
from hessaudit._messages import oneline
from hessaudit.errors import HessauditError
from hessaudit.inputs.file_record import FileRecord, file_record

__all__ = [
    "ORDER_KEY",
    "SAFETENSORS_SUFFIXES",
    "has_safetensors_suffix",
    "looks_like_safetensors",
    "read_safetensors",
    "save_checkpoint",
]

SAFETENSORS_SUFFIXES = (".safetensors",)
#: Metadata entry holding the tensors' order in a file written by :func:`save_checkpoint`.
ORDER_KEY = "hessaudit.tensor_order"
_MAX_HEADER = 100 * 1024 * 1024


def has_safetensors_suffix(p: Path) -> bool:
    """The file's extension is ``.safetensors`` (any case)."""
    return p.suffix.lower() in SAFETENSORS_SUFFIXES


def looks_like_safetensors(p: Path) -> bool:
    """The file starts with a safetensors header: an 8-byte little-endian length between 2 and
    100 MiB, then ``{``."""
    with open(p, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= _MAX_HEADER and head[8:9] == b"{"


def read_safetensors(
    p: Path, map_location: str | torch.device
) -> tuple[dict[str, torch.Tensor], str | None, dict[str, Any]]:
    """The tensors of a safetensors file (in the order it was saved in, when known), no
    container (None), and the header's metadata."""
    from safetensors import safe_open

    device = str(map_location)
    try:
        with safe_open(str(p), framework="pt", device=device) as fh:
            raw_meta = fh.metadata()
            names = list(fh.keys())
            tensors = {name: fh.get_tensor(name) for name in names}
    except Exception as exc:
        raise HessauditError(
            f"checkpoint {p} is not a valid safetensors file (truncated or corrupt?): "
            f"{oneline(exc)}"
        ) from None
    metadata = _decode_metadata(raw_meta)
    order = metadata.pop(ORDER_KEY, None)
    if isinstance(order, list) and sorted(order) == sorted(tensors):
        tensors = {name: tensors[name] for name in order}
    return tensors, None, metadata


def _decode_metadata(raw: Mapping[str, str] | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        try:
            metadata[key] = json.loads(value)
        except (TypeError, ValueError):
            metadata[key] = value
    return metadata


def save_checkpoint(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> FileRecord:
    """Write tensors to a safetensors file atomically and return its record.

    Tensors are detached, moved to the CPU and made contiguous; tensors that share memory are
    cloned (safetensors refuses shared storage). ``metadata`` values are JSON-encoded into the
    header's string-to-string ``__metadata__``; :func:`load_checkpoint` decodes them. The order
    of ``tensors`` is kept in the header and restored on load.
    """
    import safetensors.torch

    if not tensors:
        raise HessauditError(f"cannot write {path}: no tensors to save")
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise HessauditError(
                f"cannot write {path}: entry {name!r} is a {type(tensor).__name__}, not a tensor"
            )
        t = tensor.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        owns_storage = storage.nbytes() == t.numel() * t.element_size()
        if t.numel() and (ptr in seen or not owns_storage):
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        if t.numel():
            seen.add(ptr)
        out[name] = t
    header: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise HessauditError(f"cannot write {path}: metadata key {key!r} is not a string")
        try:
            header[key] = json.dumps(value, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise HessauditError(
                f"cannot write {path}: metadata {key!r} is not JSON-serializable ({exc})"
            ) from None
    if list(out) != sorted(out):
        header[ORDER_KEY] = json.dumps(list(out))
    with atomic_path(path) as tmp:
        try:
            safetensors.torch.save_file(out, str(tmp), metadata=header)
        except Exception as exc:
            raise HessauditError(f"cannot write {path}: {oneline(exc)}") from None
    return file_record(path)
