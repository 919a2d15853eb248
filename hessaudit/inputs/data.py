"""Load audit data into memory: built-in digits, ImageFolder directories and ``.npz`` files.

Sources (``--data`` / ``--eval-data``):

* ``digits``: scikit-learn's 1797 8x8 handwritten digits (shipped with scikit-learn, no
  download), pixel values divided by 16 into [0, 1], shaped (N, 1, 8, 8), 10 classes. A fixed
  split holds out one third of every class (rounded down; 596 of 1797 examples): each class's
  examples are permuted by ``torch.Generator().manual_seed(0)`` and the first third of the
  permutation is held out; both parts keep the original order. ``digits`` is the training part
  for ``role="train"`` and the held-out part for ``role="eval"``; ``digits:train``,
  ``digits:test`` and ``digits:all`` name a part explicitly. Built-in names win over files of
  the same name: write ``./digits`` for a folder called ``digits``.
* ``digits-pretrain`` (also ``:train``, ``:test``, ``:all``): a different task on the same split
  for "pretrain on one task, fine-tune on another" demos: 5 classes, label ``y % 5`` (digit
  pairs 0/5, 1/6, 2/7, 3/8, 4/9 share a class). A model pretrained on it and fine-tuned on
  ``digits`` gets a new 10-class head; the held-out third is seen by neither.
* a directory in ImageFolder layout: one sub-folder per class, sorted names -> labels 0, 1, ...
  Files are found recursively; hidden files and folders are ignored. Each file counts once
  (by device and inode, whatever links reach it); a folder link is followed only when it stays
  inside its class folder and does not loop, and FIFOs and devices are skipped (see
  :mod:`hessaudit.inputs._data_files`). Images (``.png``, ``.jpg``,
  ``.jpeg``, ``.bmp``, ``.gif``, ``.ppm``, ``.pgm``, ``.tif``, ``.tiff``, ``.webp``) are read with
  PIL, converted to RGB, or to L (grayscale) when the model takes one channel (without an input
  config or channel count: L only when every image is single-channel), scaled to [0, 1],
  resized (timm's eval transform) to the input size when one is set, else they must all share
  one size. Files with other
  extensions and images PIL cannot read are **skipped with a** :class:`DataWarning` and listed
  in :attr:`Dataset.skipped`; a class folder without image files, or nothing readable at all,
  is an error.
* a ``.npz`` file with arrays ``x`` (N, ...) and ``y`` (N,) integer labels (float labels are
  accepted when they are whole numbers), and optionally ``clean_y`` (N,) for noisy-label
  experiments. ``x`` of dtype uint8 is divided by 255, uint16 by 65535 (as torchvision's
  ``ToTensor`` does), bool read as 0/1, float used as it is; other integer dtypes are refused
  (their range is unknown). Store images as (N, C, H, W); an (N, H, W, C) array is transposed
  with a warning (see :mod:`hessaudit.inputs.preprocess`). Read with ``allow_pickle=False``.

With an :class:`~.models.InputConfig`, image tensors (N, C, H, W) are then adapted to
the model (:func:`hessaudit.inputs.preprocess.adapt_images`): grayscale repeated to the model's
channels, resized with timm's eval transform (``interpolation``, ``crop_pct``) to its size
when that is set and different, and normalized with its mean/std when set. The dataset records
its ``scaling`` and these ``preprocessing`` steps.

``samples`` takes a seeded random subset: ``torch.randperm(N, generator=seed)[:samples]``, then
**kept in the data's order** (sorted indices). For ImageFolder the subset is drawn among the
image files before they are decoded, so unreadable ones can leave fewer examples.

All data is held in memory as float32; the audit works on hundreds to a few thousand examples.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
    read_npz,
)
from hessaudit.inputs.guard import open_regular, refuse_special_file
from hessaudit.inputs.preprocess import adapt_images, array_to_tensor, prepare_images, resize_images

if TYPE_CHECKING:
    from hessaudit.inputs.data_config import InputConfig
    from hessaudit.inputs.text_tokens import TextSource

__all__ = [
    "BUILTIN_SOURCES",
    "IMAGE_EXTENSIONS",
    "DataWarning",
    "Dataset",
    "digits_split",
    "load_data",
    "prepare_images",
]

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp",
)
BUILTIN_SOURCES = (
    "digits", "digits:train", "digits:test", "digits:all",
    "digits-pretrain", "digits-pretrain:train", "digits-pretrain:test", "digits-pretrain:all",
)
_ROLES = ("train", "eval")
_DIGITS_SEED = 0
_SHOW = 5


class DataWarning(UserWarning):
    """Something in the data was skipped (an unreadable image, a non-image file)."""


_KEEP: Any = object()


@dataclass(frozen=True, eq=False)
class Dataset:
    """Examples in memory: inputs ``x`` (float32), labels ``y`` (int64, (N,)).

    ``clean_y`` holds the true labels when ``y`` carries injected noise; ``classes`` the class
    names when known (ImageFolder folder names); ``skipped`` the files left out while loading;
    ``scaling`` how stored values became inputs (a :data:`~.preprocess.SCALINGS` key);
    ``preprocessing`` the steps that adapted them to the model (transposed, resized...).
    """

    x: Tensor
    y: Tensor
    num_classes: int
    source: str
    clean_y: Tensor | None = None
    classes: tuple[str, ...] | None = None
    skipped: tuple[str, ...] = field(default=())
    scaling: str = "none"
    preprocessing: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise HessauditError(
                f"{self.source}: {self.x.shape[0]} inputs but labels of shape {tuple(self.y.shape)}"
            )
        if self.clean_y is not None and tuple(self.clean_y.shape) != tuple(self.y.shape):
            raise HessauditError(
                f"{self.source}: clean labels of shape {tuple(self.clean_y.shape)} do not match "
                f"labels of shape {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: Sequence[int] | Tensor) -> Dataset:
        """The examples at ``indices``, in the order given."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise HessauditError(
                f"{self.source}: subset index out of range for {len(self)} examples"
            )
        return dataclasses.replace(
            self,
            x=self.x[idx.to(self.x.device)],
            y=self.y[idx.to(self.y.device)],
            clean_y=None if self.clean_y is None else self.clean_y[idx.to(self.clean_y.device)],
        )

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` batches in order; the last one may be smaller."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise HessauditError(f"--batch-size {batch_size}: must be a positive integer")
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]

    def with_labels(self, y: Tensor | Sequence[int], *, clean_y: Tensor | None = _KEEP) -> Dataset:
        """The same inputs with labels ``y`` (e.g. noisy ones); ``clean_y`` defaults to the
        current clean labels (pass ``clean_y=dataset.y`` to keep the originals as clean)."""
        new_y = _check_labels(
            torch.as_tensor(y), self.num_classes, f"{self.source} (new labels)", len(self)
        ).to(self.y.device)
        new_clean = self.clean_y if clean_y is _KEEP else clean_y
        if new_clean is not None:
            new_clean = _check_labels(
                torch.as_tensor(new_clean), self.num_classes, f"{self.source} (clean labels)",
                len(self),
            ).to(self.y.device)
        return dataclasses.replace(self, y=new_y, clean_y=new_clean)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: source, size, classes, per-example shape."""
        out: dict[str, Any] = {
            "source": self.source,
            "n": len(self),
            "num_classes": self.num_classes,
            "shape": list(self.x.shape[1:]),
            "has_clean_labels": self.clean_y is not None,
            "scaling": self.scaling,
        }
        if self.preprocessing:
            out["preprocessing"] = list(self.preprocessing)
        if self.classes is not None:
            out["classes"] = list(self.classes)
        if self.skipped:
            out["skipped"] = list(self.skipped)
        return out


# --------------------------------------------------------------------------- entry point


def load_data(
    source: str,
    *,
    role: str = "train",
    input_config: InputConfig | None = None,
    num_classes: int | None = None,
    samples: int | None = None,
    seed: int = 0,
    text_source: TextSource | None = None,
) -> Dataset:
    """Load ``source`` (a built-in name, an ImageFolder directory or a ``.npz``) as a Dataset.

    Args:
        source: ``digits[...]``, ``digits-pretrain[...]``, a directory or a ``.npz`` file.
        role: ``"train"`` or ``"eval"``; picks the part of a built-in dataset named without
            ``:train`` / ``:test``.
        input_config: The model's input expectations; images are adapted to it.
        num_classes: Labels must lie in [0, num_classes); default: max label + 1 (the folder
            count for ImageFolder, the task's for built-ins).
        samples: Keep a seeded random subset of this many examples, in the data's order.
        seed: Seed of that subset.
        text_source: For text tables (.csv, .tsv, .jsonl, .parquet): the tokenizer and text options
            (:func:`hessaudit.inputs.text_model.text_source`); see :mod:`.text_data`.

    Raises:
        HessauditError: missing or unknown source, unreadable or malformed data, labels out of
            range, an impossible ``samples``.
    """
    if role not in _ROLES:
        raise HessauditError(f"data role {role!r}: must be one of {', '.join(_ROLES)}")
    if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
        raise HessauditError(f"--num-classes {num_classes}: must be a positive integer")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)):
        raise HessauditError(f"--samples {samples!r}: must be an integer")
    text = str(source)
    name, _, part = text.partition(":")
    if name in ("digits", "digits-pretrain"):
        ds = _load_digits(name, part, role)
        ds = _take(ds, samples, seed)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise HessauditError(
                f"data {text} does not exist",
                hint="give an ImageFolder directory, a .npz file, or a built-in: "
                + ", ".join(BUILTIN_SOURCES[:4]),
            )
        refuse_special_file(path, "data")  # a FIFO would block the first read forever
        from hessaudit.inputs import text_data, text_options  # text tables: inputs/text_data.py
        if text_options.is_text_file(path) and not path.is_dir():
            ds = text_data.read_text_data(
                path, text=text_source, num_classes=num_classes, samples=samples, seed=seed
            )
            return _with_num_classes(ds, num_classes)
        if path.is_dir():
            ds = _load_image_folder(path, input_config, samples, seed)
        elif path.suffix.lower() == ".npz":
            ds = _take(_load_npz(path), samples, seed)
        else:
            raise HessauditError(
                f"data {text}: unknown kind of file (extension {path.suffix or '(none)'!r})",
                hint="give an ImageFolder directory, a .npz file with x and y, 'digits', or a "
                "text table (.csv, .tsv, .jsonl, .parquet)",
            )
    if input_config is not None:
        ds = _replace_x(ds, *adapt_images(ds.x, input_config, source=ds.source))
    return _with_num_classes(ds, num_classes)


# --------------------------------------------------------------------------- helpers


def _replace_x(ds: Dataset, x: Tensor, steps: Sequence[str] = ()) -> Dataset:
    return dataclasses.replace(ds, x=x, preprocessing=(*ds.preprocessing, *steps))


def _check_labels(y: Tensor, num_classes: int | None, what: str, n: int | None = None) -> Tensor:
    if y.dtype.is_floating_point:
        if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
            raise HessauditError(f"{what}: labels must be integers, found non-integer values")
    elif y.dtype.is_complex:
        raise HessauditError(f"{what}: labels must be integers, found {y.dtype}")
    if y.ndim != 1:
        raise HessauditError(f"{what}: labels must be 1-D, found shape {tuple(y.shape)}")
    if n is not None and y.shape[0] != n:
        raise HessauditError(f"{what}: {y.shape[0]} labels for {n} examples")
    y = y.to(torch.int64)
    if y.numel():
        low, high = int(y.min()), int(y.max())
        if low < 0:
            raise HessauditError(f"{what}: label {low} is negative")
        if num_classes is not None and high >= num_classes:
            raise HessauditError(
                f"{what}: label {high} is outside [0, {num_classes}) for {num_classes} classes",
                hint="check --num-classes, or that the data belongs to this model",
            )
    return y


def _with_num_classes(ds: Dataset, num_classes: int | None) -> Dataset:
    _check_labels(ds.y, num_classes, ds.source)
    if ds.clean_y is not None:
        _check_labels(ds.clean_y, num_classes, f"{ds.source} (clean_y)")
    if num_classes is None or num_classes == ds.num_classes:
        return ds
    return dataclasses.replace(ds, num_classes=num_classes)


def _choose(n: int, samples: int | None, seed: int, what: str) -> Tensor | None:
    if samples is None:
        return None
    if samples <= 0 or samples > n:
        raise HessauditError(
            f"--samples {samples}: must be between 1 and the {n} examples of {what}"
        )
    generator = torch.Generator().manual_seed(int(seed))
    return torch.sort(torch.randperm(n, generator=generator)[:samples]).values


def _take(ds: Dataset, samples: int | None, seed: int) -> Dataset:
    idx = _choose(len(ds), samples, seed, ds.source)
    return ds if idx is None else ds.subset(idx)


# --------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise HessauditError(
            "the built-in 'digits' data needs scikit-learn", hint="pip install scikit-learn"
        ) from None
    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    return x, y


def digits_split() -> tuple[Tensor, Tensor]:
    """Indices (train, held out) of the fixed digits split, each sorted.

    One third of every class (rounded down) is held out: the class's examples are permuted with
    ``torch.Generator().manual_seed(0)`` and the first third of the permutation is held out.
    """
    _, y = _digits_arrays()
    generator = torch.Generator().manual_seed(_DIGITS_SEED)
    held: list[Tensor] = []
    for c in range(int(y.max()) + 1):
        members = torch.nonzero(y == c).flatten()
        perm = torch.randperm(members.numel(), generator=generator)
        held.append(members[perm[: members.numel() // 3]])
    test = torch.sort(torch.cat(held)).values
    mask = torch.ones(y.numel(), dtype=torch.bool)
    mask[test] = False
    train = torch.nonzero(mask).flatten()
    return train, test


def _load_digits(name: str, part: str, role: str) -> Dataset:
    if part == "":
        part = "train" if role == "train" else "test"
    if part not in ("train", "test", "all"):
        raise HessauditError(
            f"data {name}:{part}: unknown part of the built-in data",
            hint=f"use {name}, {name}:train, {name}:test or {name}:all",
        )
    x, y = _digits_arrays()
    if part != "all":
        train, test = digits_split()
        idx = train if part == "train" else test
        x, y = x[idx], y[idx]
    else:
        x, y = x.clone(), y.clone()  # never hand out the cached tensors
    classes: tuple[str, ...]
    if name == "digits-pretrain":
        y = y % 5
        classes = tuple(f"{d} or {d + 5}" for d in range(5))
    else:
        classes = tuple(str(d) for d in range(10))
    return Dataset(
        x=x, y=y, num_classes=len(classes), source=f"{name}:{part}", classes=classes,
        scaling="digits/16",
    )


# --------------------------------------------------------------------------- npz


def _load_npz(path: Path) -> Dataset:
    import numpy as np

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
    yt = _check_labels(torch.from_numpy(np.ascontiguousarray(y)), None, f"data {path} (y)")
    ct = None
    if clean is not None:
        ct = _check_labels(
            torch.from_numpy(np.ascontiguousarray(clean)), None, f"data {path} (clean_y)"
        )
    high = int(yt.max()) if yt.numel() else 0
    if ct is not None and ct.numel():
        high = max(high, int(ct.max()))
    return Dataset(
        x=xt, y=yt, num_classes=high + 1, source=source, clean_y=ct, scaling=scaling
    )


# --------------------------------------------------------------------------- ImageFolder


def _warn_skipped(root: Path, skipped: list[tuple[Path, str]]) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{p.relative_to(root)} ({why})" for p, why in skipped[:_SHOW])
    more = f"; ... ({len(skipped)} in all)" if len(skipped) > _SHOW else ""
    warnings.warn(
        f"data {root}: skipped {len(skipped)} file(s): {shown}{more}", DataWarning, stacklevel=4
    )


def _load_image_folder(
    root: Path, cfg: InputConfig | None, samples: int | None, seed: int
) -> Dataset:
    classes = class_folders(root)
    if not classes:
        raise HessauditError(
            f"data {root}: no class sub-folders",
            hint="an ImageFolder directory has one sub-folder of images per class",
        )
    files, labels, skipped = image_files(root, classes, IMAGE_EXTENSIONS)
    idx = _choose(len(files), samples, seed, str(root))
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


_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


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
