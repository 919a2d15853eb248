"""ImageFolder data: a directory with one sub-folder per class, sorted names -> labels 0, 1, ...

Files are found recursively; hidden files and folders are ignored. Each file counts once (by
device and inode, whatever links reach it); a folder link is followed only when it stays inside
its class folder and does not loop, and FIFOs and devices are skipped (see
:mod:`hessaudit.inputs._data_files`). Images (:data:`IMAGE_EXTENSIONS`) are read with PIL,
converted to RGB, or to L (grayscale) when the model takes one channel (without an input config
or channel count: L only when every image is single-channel), scaled to [0, 1], resized (timm's
eval transform) to the input size when one is set, else they must all share one size. Files
with other extensions and images PIL cannot read are **skipped with a**
:class:`~hessaudit.inputs.dataset.DataWarning` and listed in ``Dataset.skipped``; a class folder
without image files, or nothing readable at all, is an error.

The ``--samples`` subset is drawn among the image files before they are decoded, so unreadable
ones can leave fewer examples.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from hessaudit.errors import HessauditError
from hessaudit.inputs._data_files import (
    DecodeBudget,
    Unreadable,
    class_folders,
    image_files,
    open_image,
)
from hessaudit.inputs.dataset import Dataset, DataSource, DataWarning, SourceRequest, choose_subset
from hessaudit.inputs.preprocess import resize_images

if TYPE_CHECKING:
    from hessaudit.inputs.data_config import InputConfig

__all__ = ["IMAGE_EXTENSIONS", "SOURCE", "load", "matches"]

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp",
)
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
_SHOW = 5


def matches(request: SourceRequest) -> bool:
    """A directory (whatever its name)."""
    return request.path.is_dir()


def _warn_skipped(root: Path, skipped: list[tuple[Path, str]]) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{p.relative_to(root)} ({why})" for p, why in skipped[:_SHOW])
    more = f"; ... ({len(skipped)} in all)" if len(skipped) > _SHOW else ""
    warnings.warn(
        f"data {root}: skipped {len(skipped)} file(s): {shown}{more}", DataWarning, stacklevel=4
    )


def load(request: SourceRequest) -> Dataset:
    """The images under ``request.path``, decoded for ``request.input_config``; the
    ``--samples`` subset is drawn among the files before decoding."""
    root, cfg = request.path, request.input_config
    classes = class_folders(root)
    if not classes:
        raise HessauditError(
            f"data {root}: no class sub-folders",
            hint="an ImageFolder directory has one sub-folder of images per class",
        )
    files, labels, skipped = image_files(root, classes, IMAGE_EXTENSIONS)
    idx = choose_subset(len(files), request.samples, request.seed, str(root))
    if idx is not None:
        files = [files[i] for i in idx.tolist()]
        labels = [labels[i] for i in idx.tolist()]

    mode = None
    if cfg is not None and cfg.channels is not None:
        mode = "L" if cfg.channels == 1 else "RGB"
    opened: list[tuple[Path, Any, int]] = []
    budget = DecodeBudget(root)
    for f, label in zip(files, labels, strict=True):
        try:
            image = open_image(f, budget)
        except Unreadable as exc:
            skipped.append((f, str(exc)))
            continue
        opened.append((f, image, label))
    _warn_skipped(root, skipped)
    if not opened:
        raise HessauditError(f"data {root}: no readable images")
    if mode is None:
        single = all(image.mode in _GRAY_MODES for _, image, _ in opened)
        mode = "L" if single else "RGB"

    arrays: list[Tensor] = []
    for f, image, _ in opened:
        t = _decode(image, mode, cfg)
        if arrays and t.shape != arrays[0].shape:
            a, b = arrays[0].shape, t.shape
            raise HessauditError(
                f"data {root}: images have different sizes ({a[2]}x{a[1]} and {b[2]}x{b[1]}, "
                f"width x height; {f.relative_to(root)})",
                hint="pass --input-size to resize them all",
            )
        arrays.append(t)
    x = torch.stack(arrays)
    y = torch.tensor([label for _, _, label in opened], dtype=torch.int64)
    return Dataset(
        x=x, y=y, num_classes=len(classes), source=str(root), classes=tuple(classes),
        skipped=tuple(str(p) for p, _ in skipped), scaling="images/[0,1]",
    )


def _decode(image: Any, mode: str, cfg: InputConfig | None) -> Tensor:
    """A PIL image as a float32 (C, H, W) tensor in [0, 1], in ``mode`` ("L" or "RGB"),
    resized to ``cfg.size`` (timm's eval resize, :func:`hessaudit.inputs.preprocess.resize_images`)
    when that is set and different."""
    import numpy as np

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # wide grayscale: no 8-bit detour
        arr = np.asarray(image, dtype=np.float32)
        if image.mode.startswith("I;16"):
            scale = 65535.0
        elif image.mode == "I":
            scale = 65535.0 if arr.size and arr.max() > 255 else 255.0
        else:
            scale = 1.0 if not arr.size or arr.max() <= 1.0 else 255.0
        t = torch.from_numpy(arr / scale)[None].clamp_(0.0, 1.0)
        if mode == "RGB":
            t = t.expand(3, -1, -1).contiguous()
    else:
        if image.mode != mode:
            image = image.convert(mode)
        arr = np.asarray(image, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)
    if cfg is not None and cfg.size is not None and tuple(t.shape[1:]) != tuple(cfg.size):
        t = resize_images(t[None], cfg)[0].clamp_(0.0, 1.0)
    return t


SOURCE = DataSource(
    name="ImageFolder",
    matches=matches,
    load=load,
    offer="an ImageFolder directory",
    draws_samples=True,
)
