"""``.npz`` data: arrays ``x`` (N, ...) and ``y`` (N,) integer labels, optionally ``clean_y``.

Float labels are accepted when they are whole numbers; ``clean_y`` (N,) holds the true labels
for noisy-label experiments. ``x`` of dtype uint8 is divided by 255, uint16 by 65535 (as
torchvision's ``ToTensor`` does), bool read as 0/1, float used as it is; other integer dtypes
are refused (their range is unknown): :func:`hessaudit.inputs.preprocess.array_to_tensor`.
Store images as (N, C, H, W); an (N, H, W, C) array is transposed with a warning when it is
adapted to the model (:mod:`hessaudit.inputs.preprocess`). The file is read with
``allow_pickle=False``, every declared size checked before anything is inflated
(:func:`hessaudit.inputs._data_files.read_npz`).
"""

from __future__ import annotations

import torch

from hessaudit.errors import HessauditError
from hessaudit.inputs._data_files import read_npz
from hessaudit.inputs.dataset import Dataset, DataSource, SourceRequest, check_labels
from hessaudit.inputs.guard import open_regular
from hessaudit.inputs.preprocess import array_to_tensor

__all__ = ["SOURCE", "load", "matches"]


def matches(request: SourceRequest) -> bool:
    """A file (or anything else that is not a folder) whose name ends in ``.npz``."""
    return request.path.suffix.lower() == ".npz"


def load(request: SourceRequest) -> Dataset:
    """The arrays of the ``.npz`` at ``request.path``, checked and scaled to float32."""
    import numpy as np

    path = request.path
    with open_regular(path, "data") as fh:
        x, y, clean = read_npz(fh, path)
    if x.dtype.kind not in "biuf":
        raise HessauditError(f"data {path}: x must be numeric, found dtype {x.dtype}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise HessauditError(f"data {path}: x holds no examples (shape {x.shape})")
    labels = {"y": y} if clean is None else {"y": y, "clean_y": clean}
    for key, arr in labels.items():
        if arr.dtype.kind not in "biuf":
            raise HessauditError(f"data {path}: {key} must hold integer labels, found {arr.dtype}")
        if arr.ndim != 1:
            raise HessauditError(f"data {path}: {key} must be 1-D (N,), found shape {arr.shape}")
        if arr.shape[0] != x.shape[0]:
            raise HessauditError(
                f"data {path}: x has {x.shape[0]} examples but {key} has {arr.shape[0]} labels"
            )
    xt, scaling = array_to_tensor(x, str(path))
    source = str(path)
    yt = check_labels(torch.from_numpy(np.ascontiguousarray(y)), None, f"data {path} (y)")
    ct = None
    if clean is not None:
        ct = check_labels(
            torch.from_numpy(np.ascontiguousarray(clean)), None, f"data {path} (clean_y)"
        )
    high = int(yt.max()) if yt.numel() else 0
    if ct is not None and ct.numel():
        high = max(high, int(ct.max()))
    return Dataset(
        x=xt, y=yt, num_classes=high + 1, source=source, clean_y=ct, scaling=scaling
    )


SOURCE = DataSource(
    name="npz",
    matches=matches,
    load=load,
    offer="a .npz file",
    offer_unknown="a .npz file with x and y",
)
