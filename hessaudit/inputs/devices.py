"""``--device`` and ``--dtype``: validated once, the same way for every command."""

from __future__ import annotations

import torch

from hessaudit.errors import HessauditError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; fails fast, with a hint, when CUDA is not there."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise HessauditError(
                f"--device {name}: CUDA is not available on this machine", hint="use --device cpu"
            )
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise HessauditError(f"--device {name}: {exc}") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise HessauditError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
        return device
    raise HessauditError(f"--device must be cpu, cuda or cuda:N, not {name!r}")


def resolve_dtype(name: str) -> torch.dtype:
    """``float32`` (default everywhere) or ``float64`` (the tests' oracle precision)."""
    if name not in DTYPES:
        raise HessauditError(f"--dtype must be float32 or float64, not {name!r}")
    return DTYPES[name]
