"""``measure --labels FILE``: audit on the labels a model was actually trained on.

Theorem 2.1's empirical loss Lhat and loss bound C are taken on the training distribution. When
a model was fine-tuned on noisy labels, the training distribution is the noisy one, which the
``--data`` source may not hold (``finetune --inject-noise`` draws the noise itself). ``FILE`` is:

* a ``noise.json`` written by ``hessaudit finetune`` (``training_labels``: the noisy label of
  every example trained on, with its position in ``--data``): the data is restricted to exactly
  those examples (``--samples`` and the validation split left out) and relabelled. ``--data``
  must be the run's data: same size, and its labels at those positions must be the run's clean
  labels;
* a ``.npy`` array or a ``.csv`` file (one integer per line, an optional header line) of
  integer labels, one per example of ``--data``, in its order.

Labels must lie in ``[0, k)``; the file's SHA-256 goes into the audit JSON
(``inputs.labels``).
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hessaudit.errors import HessauditError
from hessaudit.inputs.dataset import Dataset

__all__ = ["apply_label_file"]

_FLAG = "--labels"
#: Larger label files are refused before they are read (a label is a few bytes per example).
_MAX_BYTES = 256 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_file(path: Path) -> None:
    try:
        info = path.stat()
    except OSError:
        raise HessauditError(f"{_FLAG} {path} does not exist") from None
    if not stat.S_ISREG(info.st_mode):
        raise HessauditError(f"{_FLAG} {path} is not a regular file")
    if info.st_size > _MAX_BYTES:
        raise HessauditError(f"{_FLAG} {path} is {info.st_size} bytes; too large for labels")


def _as_labels(values: Any, path: Path, num_classes: int, what: str = "labels") -> torch.Tensor:
    """``values`` as an int64 tensor of integers in ``[0, num_classes)``."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        array = np.asarray([], dtype=object)
    if array.ndim != 1:
        raise HessauditError(f"{_FLAG} {path}: {what} must be one-dimensional, not of shape "
                             f"{tuple(array.shape)}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise HessauditError(f"{_FLAG} {path}: {what} must be whole numbers")
    elif array.dtype.kind not in "iu" and array.size:
        raise HessauditError(f"{_FLAG} {path}: {what} must be integers, not {array.dtype}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise HessauditError(
            f"{_FLAG} {path}: {what} must lie in [0, {num_classes}); found "
            f"{int(array.min())}..{int(array.max())}"
        )
    return torch.from_numpy(array.copy())


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise HessauditError(f"{_FLAG} {path} is not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise HessauditError(f"{_FLAG} {path} is not a single .npy array")
    return np.array(array)


def _read_csv(path: Path) -> list[float]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise HessauditError(f"{_FLAG} {path} cannot be read as text ({exc})") from None
    rows = [line.strip().strip(",") for line in lines if line.strip()]
    values: list[float] = []
    for number, text in enumerate(rows, start=1):
        try:
            values.append(float(text))
        except ValueError:
            if number == 1:  # a header line
                continue
            raise HessauditError(
                f"{_FLAG} {path}: line {number} is not an integer label ({text[:40]!r})",
                hint="write one integer label per line",
            ) from None
    return values


def _from_noise_json(path: Path, data: Dataset) -> tuple[Dataset, dict[str, Any]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raise HessauditError(f"{_FLAG} {path} is not valid JSON") from None
    record = document.get("training_labels") if isinstance(document, dict) else None
    if not isinstance(record, dict) or not isinstance(record.get("labels"), list):
        raise HessauditError(
            f"{_FLAG} {path}: no training_labels in it (not a finetune noise.json, or one "
            "written by an older hessaudit)",
            hint="give the noise.json of a run, or a .npy/.csv of integer labels",
        )
    indices = record.get("indices")
    if not isinstance(indices, list):
        raise HessauditError(
            f"{_FLAG} {path}: the run's examples have no known positions in its --data (an "
            "ImageFolder subset drawn with --samples)",
            hint="fine-tune without --samples, or pass the labels as a .npy/.csv for --data",
        )
    size = record.get("source_size")
    if size is not None and size != len(data):
        raise HessauditError(
            f"{_FLAG} {path}: its labels are for the {size} examples of --data "
            f"{record.get('data')!r}; --data {data.source} has {len(data)}",
            hint="give measure the --data the run was fine-tuned on",
        )
    idx = _as_labels(indices, path, len(data), what="indices")
    labels = _as_labels(record["labels"], path, data.num_classes)
    if len(labels) != len(idx):
        raise HessauditError(f"{_FLAG} {path}: {len(labels)} labels for {len(idx)} positions")
    subset = data.subset(idx)
    own = (subset.clean_y if subset.clean_y is not None else subset.y).cpu().to(torch.int64)
    clean = record.get("clean_labels")
    if clean is not None and not torch.equal(_as_labels(clean, path, data.num_classes), own):
        raise HessauditError(
            f"{_FLAG} {path}: the run's clean labels differ from --data {data.source}'s "
            "labels at the same positions",
            hint="give measure the --data the run was fine-tuned on",
        )
    return subset.with_labels(labels, clean_y=own), {"kind": "finetune noise.json"}


def apply_label_file(data: Dataset, path_text: str) -> tuple[Dataset, dict[str, Any]]:
    """``data`` relabelled (and, for a ``noise.json``, restricted to the examples trained on)
    from the label file ``path_text``, and the record for the audit JSON's ``inputs.labels``.

    Raises:
        HessauditError: a missing or unreadable file, a length that is not the data's, labels
            out of range, a ``noise.json`` of another ``--data``.
    """
    path = Path(path_text).expanduser()
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        relabelled, record = _from_noise_json(path, data)
    elif suffix in (".npy", ".csv"):
        raw = _read_npy(path) if suffix == ".npy" else _read_csv(path)
        labels = _as_labels(raw, path, data.num_classes)
        if len(labels) != len(data):
            raise HessauditError(
                f"{_FLAG} {path}: {len(labels)} labels for the {len(data)} examples of --data "
                f"{data.source}",
                hint="one label per example of --data, in its order",
            )
        relabelled = data.with_labels(labels, clean_y=data.y)
        record = {"kind": suffix[1:]}
    else:
        raise HessauditError(
            f"{_FLAG} {path}: unknown kind of file (extension {path.suffix or '(none)'!r})",
            hint="give a finetune noise.json, a .npy or a .csv of integer labels",
        )
    assert relabelled.clean_y is not None
    changed = int((relabelled.y.cpu() != relabelled.clean_y.cpu()).sum())
    record.update(
        path=str(path),
        sha256=_sha256(path),
        examples=len(relabelled),
        differing_from_data=changed,
    )
    return relabelled, record
