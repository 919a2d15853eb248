"""PyTorch checkpoints (``.pt``, ``.pth``, ``.bin``, ``.ckpt``, ``.tar``), read with
``torch.load(weights_only=True)`` and nothing else: hessaudit never unpickles arbitrary Python
objects. A file that needs them (a pickled ``nn.Module``, a custom class) is refused. The one
class allowed beyond torch's own list is :class:`argparse.Namespace`, which timm's training
scripts store under ``args``. The archive's declared sizes are checked before torch inflates
anything; the state dict is then taken out of its container
(:func:`hessaudit.inputs.checkpoint_names.unwrap_container`).
"""

from __future__ import annotations

import argparse
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from hessaudit._messages import oneline
from hessaudit.errors import HessauditError
from hessaudit.inputs.checkpoint_names import unwrap_container
from hessaudit.inputs.guard import check_zip_archive

__all__ = ["TORCH_SUFFIXES", "looks_like_torch", "read_torch"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


def looks_like_torch(p: Path) -> bool:
    """The file is a zip archive (torch >= 1.6, perhaps truncated) or a pickle stream (older
    torch), whatever its extension."""
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04" or zipfile.is_zipfile(p):  # a zip, perhaps a truncated one
        return True
    # Legacy (pre-1.6) torch.save output is a pickle stream: PROTO opcode then a version.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def read_torch(
    p: Path, map_location: str | torch.device
) -> tuple[dict[str, torch.Tensor], str | None, dict[str, Any]]:
    """The state dict of a torch file, its container key (None for a bare state dict) and the
    scalars stored beside it."""
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
    return unwrap_container(obj, p)
