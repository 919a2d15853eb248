"""Load audit data into memory: :func:`load_data` dispatches ``--data`` / ``--eval-data`` to a
data source.

Sources, one module each, tried in the order of :data:`SOURCES`:

* :mod:`~hessaudit.inputs.digits`: the built-in ``digits`` and ``digits-pretrain`` sets (with
  ``:train``, ``:test``, ``:all``), matched by name before any file is looked at;
* :mod:`~hessaudit.inputs.image_folder`: a directory in ImageFolder layout;
* :mod:`~hessaudit.inputs.npz`: a ``.npz`` file with arrays ``x``, ``y`` (and ``clean_y``);
* :mod:`~hessaudit.inputs.text_files`: a text table (``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``),
  tokenized for a text classifier.

A value no named source takes must be an existing path; FIFOs and devices are refused before any
source looks at it (a FIFO would block the first read forever). A path no source takes is an
error whose hint lists the sources.

Then, whatever the source: ``samples`` keeps a seeded random subset
(:func:`~hessaudit.inputs.dataset.choose_subset`: ``torch.randperm(N, generator=seed)[:samples]``,
kept in the data's order); with an :class:`~hessaudit.inputs.data_config.InputConfig`, image
tensors (N, C, H, W) are adapted to the model (:func:`hessaudit.inputs.preprocess.adapt_images`:
grayscale repeated to the model's channels, resized with timm's eval transform to its size when
that is set and different, normalized with its mean/std when set), and the dataset records its
``scaling`` and these ``preprocessing`` steps; labels are checked against ``num_classes``. All
data is held in memory as float32; the audit works on hundreds to a few thousand examples.

**Adding a source** (say text files: ``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``) is one new
module and one entry in :data:`SOURCES` (and its import). The module defines ``matches(request)
-> bool`` and ``load(request) -> Dataset`` on a :class:`~hessaudit.inputs.dataset.SourceRequest`
and exports them as ``SOURCE = DataSource(name=..., matches=..., load=..., offer="a .csv file",
...)`` (:class:`~hessaudit.inputs.dataset.DataSource` says what each field does); its entry goes
before any source that would also match its paths. Nothing else changes: argument checks, the
subset, the adaptation to the model, the label check and the hints for a missing or unknown path
are the dispatcher's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from torch import Tensor

from hessaudit.errors import HessauditError
from hessaudit.inputs import digits, image_folder, npz, text_files
from hessaudit.inputs.dataset import (
    Dataset,
    DataSource,
    DataWarning,
    SourceRequest,
    check_labels,
    choose_subset,
    take_subset,
)
from hessaudit.inputs.digits import BUILTIN_SOURCES, digits_split
from hessaudit.inputs.guard import refuse_special_file
from hessaudit.inputs.image_folder import IMAGE_EXTENSIONS
from hessaudit.inputs.preprocess import adapt_images, prepare_images

if TYPE_CHECKING:
    from hessaudit.inputs.data_config import InputConfig
    from hessaudit.inputs.text_tokens import TextSource

__all__ = [
    "BUILTIN_SOURCES",
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "DataWarning",
    "Dataset",
    "choose_subset",
    "digits_split",
    "find_source",
    "load_data",
    "prepare_images",
]

#: The data sources, in the order they are tried: named ones first (on the text alone), then
#: the others on an existing path. Register a new source here.
SOURCES: tuple[DataSource, ...] = (
    digits.SOURCE,
    image_folder.SOURCE,
    npz.SOURCE,
    text_files.SOURCE,
)
_ROLES = ("train", "eval")


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
        source: ``digits[...]``, ``digits-pretrain[...]``, a directory or a ``.npz`` file (any
            source of :data:`SOURCES`).
        role: ``"train"`` or ``"eval"``; picks the part of a built-in dataset named without
            ``:train`` / ``:test``.
        input_config: The model's input expectations; images are adapted to it.
        num_classes: Labels must lie in [0, num_classes); default: max label + 1 (the folder
            count for ImageFolder, the task's for built-ins).
        samples: Keep a seeded random subset of this many examples, in the data's order.
        seed: Seed of that subset.
        text_source: For text tables (.csv, .tsv, .jsonl, .parquet): the tokenizer and text
            options (:func:`hessaudit.inputs.text_model.text_source`); see :mod:`.text_data`.

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
    request = SourceRequest(
        text=str(source), role=role, input_config=input_config, samples=samples, seed=seed,
        text_source=text_source, num_classes=num_classes,
    )
    chosen = find_source(request)
    ds = chosen.load(request)
    if not chosen.draws_samples:
        ds = take_subset(ds, samples, seed)
    if input_config is not None and ds.scaling != "tokens":  # token ids are not images
        ds = _replace_x(ds, *adapt_images(ds.x, input_config, source=ds.source))
    return _with_num_classes(ds, num_classes)


def find_source(request: SourceRequest) -> DataSource:
    """The first source of :data:`SOURCES` that takes ``request``: a named one on the text
    alone, else one that takes the existing, non-special path.

    Raises:
        HessauditError: a path that does not exist, is a FIFO or device, or that no source takes.
    """
    for source in SOURCES:
        if source.named and source.matches(request):
            return source
    path = request.path
    if not path.exists():
        raise HessauditError(
            f"data {request.text} does not exist", hint=_hint(lambda s: s.offer)
        )
    refuse_special_file(path, "data")  # a FIFO would block the first read forever
    for source in SOURCES:
        if not source.named and source.matches(request):
            return source
    raise HessauditError(
        f"data {request.text}: unknown kind of file (extension {path.suffix or '(none)'!r})",
        hint=_hint(lambda s: s.offer_unknown or s.offer),
    )


def _hint(offer: Callable[[DataSource], str]) -> str:
    """``give <file sources>, or <named sources>``, each as ``offer`` names it."""
    files = [offer(s) for s in SOURCES if not s.named]
    named = [offer(s) for s in SOURCES if s.named]
    return "give " + ", ".join(files) + (", or " + ", ".join(named) if named else "")


def _replace_x(ds: Dataset, x: Tensor, steps: Sequence[str] = ()) -> Dataset:
    return dataclasses.replace(ds, x=x, preprocessing=(*ds.preprocessing, *steps))


def _with_num_classes(ds: Dataset, num_classes: int | None) -> Dataset:
    check_labels(ds.y, num_classes, ds.source)
    if ds.clean_y is not None:
        check_labels(ds.clean_y, num_classes, f"{ds.source} (clean_y)")
    if num_classes is None or num_classes == ds.num_classes:
        return ds
    return dataclasses.replace(ds, num_classes=num_classes)
