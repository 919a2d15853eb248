"""The types every data source shares: :class:`Dataset`, :class:`DataWarning`, and the
:class:`DataSource` / :class:`SourceRequest` pair through which
:func:`hessaudit.inputs.data.load_data` dispatches to a source; plus the label check and the
seeded ``--samples`` subset.

``--samples n`` keeps ``torch.randperm(N, generator=seed)[:n]``, **in the data's order** (sorted
indices): :func:`choose_subset`. Same seed, same subset, whatever the source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from hessaudit.errors import HessauditError

if TYPE_CHECKING:
    from hessaudit.inputs.data_config import InputConfig
    from hessaudit.inputs.text_tokens import TextSource

__all__ = [
    "DataSource",
    "DataWarning",
    "Dataset",
    "SourceRequest",
    "check_labels",
    "choose_subset",
    "take_subset",
]


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
        new_y = check_labels(
            torch.as_tensor(y), self.num_classes, f"{self.source} (new labels)", len(self)
        ).to(self.y.device)
        new_clean = self.clean_y if clean_y is _KEEP else clean_y
        if new_clean is not None:
            new_clean = check_labels(
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


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class SourceRequest:
    """What :func:`~hessaudit.inputs.data.load_data` asks of a source: the ``--data`` value as
    given (``text``), the part of a built-in set a bare name means (``role``: ``"train"`` or
    ``"eval"``), the model's input config (images are adapted to it after loading; a source that
    decodes files may use it, e.g. to pick grayscale), and the ``--samples`` subset."""

    text: str
    role: str = "train"
    input_config: InputConfig | None = None
    samples: int | None = None
    seed: int = 0
    #: For text tables: the tokenizer and text options (:mod:`hessaudit.inputs.text_files`).
    text_source: TextSource | None = None
    num_classes: int | None = None

    @property
    def path(self) -> Path:
        """``text`` as a path, ``~`` expanded (for the sources that are files or folders)."""
        return Path(self.text).expanduser()


@dataclass(frozen=True)
class DataSource:
    """One kind of ``--data``, registered in :data:`hessaudit.inputs.data.SOURCES`.

    ``matches`` says whether a request is for this source. A ``named`` source (a built-in data
    set) is matched on the text alone, before the file system is consulted, so its names win
    over files of the same name; the others are matched only on paths that exist and are not
    FIFOs or devices. ``load`` returns the :class:`Dataset` as stored (scaled to [0, 1], not
    yet adapted to the model); unless ``draws_samples``, the dispatcher then takes the
    ``--samples`` subset with :func:`take_subset` (a source that decodes files draws it itself,
    among the files, before decoding them). ``offer`` is how the hint for a missing path names
    the source, ``offer_unknown`` (default ``offer``) how the hint for a file no source takes
    names it.
    """

    name: str
    matches: Callable[[SourceRequest], bool]
    load: Callable[[SourceRequest], Dataset]
    offer: str
    offer_unknown: str | None = None
    named: bool = False
    draws_samples: bool = False


# --------------------------------------------------------------------------- labels, subsets


def check_labels(y: Tensor, num_classes: int | None, what: str, n: int | None = None) -> Tensor:
    """``y`` as int64 labels in [0, num_classes) (``num_classes`` None: any label >= 0).

    Float labels are accepted when they are whole numbers; ``n`` is the expected count.
    """
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


def choose_subset(n: int, samples: int | None, seed: int, what: str) -> Tensor | None:
    """The sorted indices of the seeded ``--samples`` subset of ``n`` examples (None: all).

    ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:samples]``, sorted.
    ``what`` names the data in the error for a ``samples`` outside [1, n].
    """
    if samples is None:
        return None
    if samples <= 0 or samples > n:
        raise HessauditError(
            f"--samples {samples}: must be between 1 and the {n} examples of {what}"
        )
    generator = torch.Generator().manual_seed(int(seed))
    return torch.sort(torch.randperm(n, generator=generator)[:samples]).values


def take_subset(ds: Dataset, samples: int | None, seed: int) -> Dataset:
    """``ds`` restricted to its :func:`choose_subset` (``ds`` itself when ``samples`` is None)."""
    idx = choose_subset(len(ds), samples, seed, ds.source)
    return ds if idx is None else ds.subset(idx)
