"""Read and write checkpoints: safetensors and PyTorch files, containers, prefixes, hashes.

A checkpoint is read into a flat ``{name: tensor}`` dict, the way timm's
``timm.models.load_state_dict`` does it:

* ``.safetensors`` files are read with safetensors; the header's ``__metadata__`` becomes
  :attr:`Checkpoint.metadata`, with values that are JSON decoded.
* ``.pt``, ``.pth``, ``.bin`` and ``.ckpt`` files are read with ``torch.load(weights_only=True)``
  and nothing else: hessaudit never unpickles arbitrary Python objects. A file that needs them
  (a pickled ``nn.Module``, a custom class) is refused. The one class allowed beyond torch's own
  list is :class:`argparse.Namespace`, which timm's training scripts store under ``args``.
* Any other extension is sniffed: a safetensors header, else a torch zip archive or pickle.

Containers are unwrapped in timm's order of preference: ``state_dict_ema``, ``model_ema``
(the EMA weights), then ``state_dict``, then ``model``; the key used is recorded in
:attr:`Checkpoint.container`. Scalars stored beside it (``epoch``, ``arch``, ``metric``...) go to
:attr:`Checkpoint.metadata`. Wrapper prefixes are then stripped from every name:
``module.`` (DataParallel / DDP), ``_orig_mod.`` (``torch.compile``) and
``_fsdp_wrapped_module.`` (FSDP), in any order, and ``model.`` when *every* name has it (PyTorch
Lightning). Every floating-point tensor must be finite.

safetensors files have no tensor order of their own (names are stored sorted); files written by
:func:`save_checkpoint` keep the order they were given in, through a metadata entry that
:func:`load_checkpoint` reads and removes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import struct
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hessaudit._atomic import atomic_path
from hessaudit._messages import oneline
from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import check_tensor_views, check_zip_archive, open_regular

__all__ = [
    "CONTAINER_KEYS",
    "SAFETENSORS_SUFFIXES",
    "TORCH_SUFFIXES",
    "WRAPPER_PREFIXES",
    "Checkpoint",
    "FileRecord",
    "load_checkpoint",
    "save_checkpoint",
    "sha256_file",
    "strip_prefixes",
]

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
#: Container keys, in order of preference (timm's ``load_state_dict`` with ``use_ema=True``).
CONTAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
#: Prefixes added by wrappers, stripped from the start of every name wherever present.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.")
#: Prefix stripped only when every name has it (PyTorch Lightning's ``self.model``).
COMMON_PREFIXES = ("model.",)
_ORDER_KEY = "hessaudit.tensor_order"
_CHUNK = 1 << 20
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class FileRecord:
    """Where a file is and what exactly it held: path, SHA-256 and size in bytes."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


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


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with open_regular(path) as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise HessauditError(f"cannot read {path}: {oneline(exc)}") from None
    return digest.hexdigest()


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Load a checkpoint file into a flat, cleaned ``{name: tensor}`` dict.

    Args:
        path: A ``.safetensors``, ``.pt``, ``.pth``, ``.bin`` or ``.ckpt`` file (other
            extensions are sniffed), or a Hugging Face model directory
            (:mod:`hessaudit.inputs.hf_checkpoints`).
        map_location: Device the tensors are loaded to.

    Raises:
        HessauditError: the file is missing, empty, unreadable, corrupt, holds non-tensor
            Python objects, holds no tensors, or holds NaN/Inf values.
    """
    if Path(path).is_dir():  # a Hugging Face model directory: hessaudit.inputs.hf_checkpoints
        return _load_model_dir(Path(path), map_location)
    p = _check_file(path)
    fmt = _detect_format(p)
    record = FileRecord(path=str(p), sha256=sha256_file(p), size=p.stat().st_size)
    if fmt == "safetensors":
        tensors, metadata = _read_safetensors(p, map_location)
        container = None
    else:
        tensors, container, metadata = _read_torch(p, map_location)
    if not tensors:
        raise HessauditError(f"{p}: no tensors found in the checkpoint")
    check_tensor_views(tensors, record.size, f"checkpoint {p}")
    tensors, stripped = _strip_with_check(tensors, p)
    _check_finite(tensors, p)
    return Checkpoint(
        tensors=tensors, record=record, container=container, metadata=metadata, stripped=stripped
    )


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
        header[_ORDER_KEY] = json.dumps(list(out))
    with atomic_path(path) as tmp:
        try:
            safetensors.torch.save_file(out, str(tmp), metadata=header)
        except Exception as exc:
            raise HessauditError(f"cannot write {path}: {oneline(exc)}") from None
    p = Path(path)
    return FileRecord(path=str(p), sha256=sha256_file(p), size=p.stat().st_size)


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


# --------------------------------------------------------------------------- internals


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _check_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise HessauditError(f"checkpoint {p} does not exist")
    if p.is_dir():
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
    return p


def _read_head(p: Path, n: int) -> bytes:
    with open(p, "rb") as fh:
        return fh.read(n)


def _looks_like_safetensors(p: Path) -> bool:
    head = _read_head(p, 9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= _MAX_HEADER and head[8:9] == b"{"


def _looks_like_torch(p: Path) -> bool:
    head = _read_head(p, 4)
    if head == b"PK\x03\x04" or zipfile.is_zipfile(p):  # a zip, perhaps a truncated one
        return True
    # Legacy (pre-1.6) torch.save output is a pickle stream: PROTO opcode then a version.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _detect_format(p: Path) -> str:
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if _looks_like_torch(p):
        return "torch"
    if _looks_like_safetensors(p):
        return "safetensors"
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


def _decode_metadata(raw: Mapping[str, str] | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        try:
            metadata[key] = json.loads(value)
        except (TypeError, ValueError):
            metadata[key] = value
    return metadata


def _read_safetensors(
    p: Path, map_location: str | torch.device
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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
    order = metadata.pop(_ORDER_KEY, None)
    if isinstance(order, list) and sorted(order) == sorted(tensors):
        tensors = {name: tensors[name] for name in order}
    return tensors, metadata


def _read_torch(
    p: Path, map_location: str | torch.device
) -> tuple[dict[str, torch.Tensor], str | None, dict[str, Any]]:
    # torch's reader inflates deflated members too: a re-zipped file of zeros would expand
    # a thousandfold while it is read
    check_zip_archive(p, f"checkpoint {p}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            # a legacy pickle of another protocol: torch warns, then loads it or refuses it
            warnings.filterwarnings("ignore", message=r".*pickle protocol", category=UserWarning)
            obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weightsunpickler" in str(exc).lower():
            raise HessauditError(
                f"checkpoint {p} contains non-tensor Python objects and was not loaded "
                "(hessaudit reads torch files with weights_only=True and never unpickles "
                "arbitrary objects)",
                hint="save model.state_dict() instead of the model, or convert to .safetensors",
            ) from None
        raise HessauditError(
            f"checkpoint {p} could not be read (truncated or corrupt?): {oneline(exc)}"
        ) from None
    except Exception as exc:
        raise HessauditError(
            f"checkpoint {p} could not be read as a PyTorch checkpoint (truncated or corrupt?): "
            f"{oneline(exc)}"
        ) from None
    return _unwrap(obj, p)


def _unwrap(obj: Any, p: Path) -> tuple[dict[str, torch.Tensor], str | None, dict[str, Any]]:
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


def _strip_with_check(
    tensors: dict[str, torch.Tensor], p: Path
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
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
    tensors, stripped = _strip_with_check(read.tensors, p)
    _check_finite(tensors, p)
    record = FileRecord(path=read.path, sha256=read.sha256, size=read.size)
    return Checkpoint(tensors, record, None, read.metadata, stripped)
