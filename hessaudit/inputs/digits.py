"""The built-in data: scikit-learn's 8x8 handwritten digits (shipped with scikit-learn, no
download).

* ``digits``: 1797 images, pixel values divided by 16 into [0, 1], shaped (N, 1, 8, 8), 10
  classes. A fixed split holds out one third of every class (rounded down; 596 of 1797
  examples): each class's examples are permuted by ``torch.Generator().manual_seed(0)`` and the
  first third of the permutation is held out; both parts keep the original order. ``digits`` is
  the training part for ``role="train"`` and the held-out part for ``role="eval"``;
  ``digits:train``, ``digits:test`` and ``digits:all`` name a part explicitly. Built-in names
  win over files of the same name: write ``./digits`` for a folder called ``digits``.
* ``digits-pretrain`` (also ``:train``, ``:test``, ``:all``): a different task on the same split
  for "pretrain on one task, fine-tune on another" demos: 5 classes, label ``y % 5`` (digit
  pairs 0/5, 1/6, 2/7, 3/8, 4/9 share a class). A model pretrained on it and fine-tuned on
  ``digits`` gets a new 10-class head; the held-out third is seen by neither.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from hessaudit.errors import HessauditError
from hessaudit.inputs.dataset import Dataset, DataSource, SourceRequest

__all__ = ["BUILTIN_SOURCES", "SOURCE", "digits_split", "load", "matches"]

BUILTIN_SOURCES = (
    "digits", "digits:train", "digits:test", "digits:all",
    "digits-pretrain", "digits-pretrain:train", "digits-pretrain:test", "digits-pretrain:all",
)
_NAMES = ("digits", "digits-pretrain")
_DIGITS_SEED = 0


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


def matches(request: SourceRequest) -> bool:
    """``digits[:part]`` or ``digits-pretrain[:part]`` (:func:`load` refuses an unknown part)."""
    return request.text.partition(":")[0] in _NAMES


def load(request: SourceRequest) -> Dataset:
    """The part of the built-in set that ``request.text`` (or, bare, ``request.role``) names."""
    name, _, part = request.text.partition(":")
    if part == "":
        part = "train" if request.role == "train" else "test"
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


SOURCE = DataSource(
    name="digits",
    matches=matches,
    load=load,
    offer="a built-in: " + ", ".join(BUILTIN_SOURCES[:4]),
    offer_unknown="'digits'",
    named=True,
)
