"""A plain safetensors checkpoint read without torch: the header, then numpy arrays on demand.

Importing torch alone takes about 650 MB of memory, and ``hessaudit inspect`` of two
safetensors files needs none of it: names, shapes and dtypes are in the header, and a layer's
distance is a float64 norm that numpy computes as well. :func:`read_plain` gives the tensors of
a ``.safetensors`` file as :class:`ArrayTensor` views, in the order
:func:`hessaudit.inputs.checkpoints.load_checkpoint` gives them, reading a tensor's values only
when asked, one tensor at a time.

It reads only *plain* files, those that ``load_checkpoint`` reads without changing or refusing
anything, and returns None for every other one, which the caller then reads with
``load_checkpoint``: the one place that says what is wrong with a file, so both ways give the
same answer. Not plain:

* not a non-empty regular file named ``*.safetensors``, or not a valid safetensors file;
* a dtype outside :data:`NUMPY_DTYPES` (bfloat16 and float8 have no numpy dtype; complex
  weights are refused by ``load_checkpoint``);
* a name that ``load_checkpoint`` would rename (:data:`RENAMED_PREFIXES`: the wrapper prefixes
  it strips), or a tensor-order entry that is not a list of names;
* a floating-point tensor holding a NaN or an infinity (checked here, one tensor at a time).
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessaudit.inputs.file_record import FileRecord, file_record

__all__ = ["NUMPY_DTYPES", "RENAMED_PREFIXES", "ArrayTensor", "PlainSafetensors", "read_plain"]

#: safetensors dtypes read here, and their numpy names.
NUMPY_DTYPES = {
    "F16": "float16", "F32": "float32", "F64": "float64", "I8": "int8", "I16": "int16",
    "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool",
}
#: Name prefixes that ``load_checkpoint`` strips (DataParallel, torch.compile, FSDP, and
#: Lightning's ``model.`` when every name has it): a file with any of them is not plain.
RENAMED_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "model.")
#: Metadata entry of the tensor order kept by ``save_checkpoint``.
_ORDER_KEY = "hessaudit.tensor_order"
#: Bytes read through one mapping of a file before it is mapped again (see :class:`_Source`),
#: at least; and at least this many times the header's size.
REMAP_BYTES, REMAP_PER_HEADER_BYTE = 8 << 20, 16


class _Source:
    """A safetensors file read tensor by tensor, through a mapping of the file that is closed
    and made again once enough bytes were read through it: a mapping's pages count in the
    resident set until it is closed, so reading a large file through one mapping would peak at
    the file's size. Each new mapping parses the header again, so "enough" is at least
    :data:`REMAP_PER_HEADER_BYTE` times the header's size: the parsing costs at most 1/16 of
    the reading, however many tensors the file holds."""

    def __init__(self, path: str, header_bytes: int) -> None:
        self.path = path
        self._budget = max(REMAP_BYTES, REMAP_PER_HEADER_BYTE * header_bytes)
        self._file: Any = None
        self._read = 0

    def get(self, name: str, nbytes: int) -> Any:
        if self._file is None or (self._read and self._read + nbytes > self._budget):
            from safetensors import safe_open

            self._file = None  # the last reference: the old mapping is closed here
            self._file = safe_open(self.path, framework="np")
            self._read = 0
        self._read += nbytes
        return self._file.get_tensor(name)


@dataclass(frozen=True, eq=False)
class ArrayTensor:
    """One tensor of a plain safetensors file: what layer selection reads of a
    ``torch.Tensor`` (``shape``, ``ndim``, ``numel()``, ``is_floating_point()``), and its
    values, read from the file when :meth:`values` is called."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    source: _Source

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def is_floating_point(self) -> bool:
        return self.dtype.startswith("float")

    def values(self) -> Any:
        """The values, as a numpy array (read from the file now)."""
        import numpy as np

        return self.source.get(self.name, self.numel() * np.dtype(self.dtype).itemsize)

    def float64(self) -> Any:
        """The values as a float64 numpy array (exact for every dtype read here)."""
        return self.values().astype("float64")


@dataclass(frozen=True, eq=False)
class PlainSafetensors:
    """A plain safetensors file: its record (path, SHA-256, size) and its tensors in order."""

    record: FileRecord
    tensors: dict[str, ArrayTensor]


def read_plain(path: str | os.PathLike[str]) -> PlainSafetensors | None:
    """The file at ``path`` as :class:`PlainSafetensors`, or None when it is not plain (see
    the module docstring); checks every floating-point tensor for NaN and infinity."""
    p = Path(path)
    if p.suffix.lower() != ".safetensors" or not _regular_nonempty(p):
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="np") as source:  # reads and checks the header
            names = list(source.keys())
            headers = {name: source.get_slice(name) for name in names}
            dtypes = {name: NUMPY_DTYPES.get(h.get_dtype()) for name, h in headers.items()}
            shapes = {name: tuple(int(n) for n in h.get_shape()) for name, h in headers.items()}
            order = _order(source.metadata(), names)
    except Exception:  # load_checkpoint says what is wrong with the file
        return None
    if not names or order is None or None in dtypes.values():
        return None
    if any(name.startswith(RENAMED_PREFIXES) for name in names):
        return None
    source = _Source(str(p), header_bytes=_header_bytes(p))
    tensors = {name: ArrayTensor(name, shapes[name], dtypes[name], source) for name in order}
    if not all(_finite(tensor) for tensor in tensors.values()):
        return None
    return PlainSafetensors(record=file_record(p), tensors=tensors)


def _regular_nonempty(p: Path) -> bool:
    try:
        info = p.stat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size > 0 and os.access(p, os.R_OK)


def _header_bytes(p: Path) -> int:
    with open(p, "rb") as fh:  # a regular file that safetensors has just read
        return int.from_bytes(fh.read(8), "little")


def _order(metadata: dict[str, str] | None, names: list[str]) -> list[str] | None:
    """The names in the order ``load_checkpoint`` gives them (the saved order when the file
    records one for exactly these names, else the file's); None for an order entry that is
    not a list of names, which ``load_checkpoint`` is left to handle."""
    raw = (metadata or {}).get(_ORDER_KEY)
    if raw is None:
        return names
    try:
        order = json.loads(raw)
    except ValueError:
        return names  # load_checkpoint keeps an entry that is not JSON as text
    if not isinstance(order, list):
        return names
    if not all(isinstance(name, str) for name in order):
        return None
    return order if sorted(order) == sorted(names) else names


def _finite(tensor: ArrayTensor) -> bool:
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    import numpy as np

    return bool(np.isfinite(tensor.values()).all())
