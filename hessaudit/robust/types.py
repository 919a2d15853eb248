"""The types every part of a fine-tuning run shares; the bottom of :mod:`hessaudit.robust`'s
run modules (it imports none of them).

* :class:`Split` / :class:`LabelSplit` / :class:`DataSetup`: what a run trains and evaluates
  on (built by :func:`hessaudit.robust.data_setup.prepare_data`);
* :class:`NoiseMatrixChoice`: the ``F`` the loss uses and its source
  (:func:`hessaudit.robust.noise_estimate.resolve_noise_matrix`);
* :class:`TrainingDisplay`: what :func:`~hessaudit.robust.trainer.run_finetune` reports while it
  runs (``hessaudit.report.training`` implements it);
* :class:`FinetuneResult`: what a run produced;
* :data:`METRIC_COLUMNS`: the columns of ``metrics.csv``; :data:`SCHEMA` and
  :data:`STATE_FORMAT` the format tags of the run's documents and of ``state.pt``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from hessaudit.robust.config import FinetuneConfig
    from hessaudit.robust.noise import NoiseInjection

SCHEMA = "hessaudit.finetune/1"
#: Format tag of ``state.pt``, the per-epoch resume state.
STATE_FORMAT = "hessaudit.finetune-state/1"
METRIC_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_penalty",
    "train_acc",
    "train_acc_clean",
    "val_loss",
    "val_acc",
    "heldout_loss",
    "heldout_acc",
    "max_distance",
    "max_distance_layer",
    "head_distance",
    "max_radius_ratio",
    "seconds",
)
#: A metric that was not measured (no validation split, no penalty...).
NAN = float("nan")


# --------------------------------------------------------------------------- data


@dataclass
class Split:
    """Examples on the run's device and the labels they are trained on / evaluated against."""

    x: torch.Tensor
    y: torch.Tensor  # labels trained on / evaluated against
    clean: torch.Tensor | None  # clean labels when known (training split only)

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class LabelSplit:
    """The loaded training data's labels after ``--inject-noise``, and the validation split
    (``--val-fraction``) as positions in the loaded data (after ``--samples``)."""

    noisy: torch.Tensor  # (n,) int64: the labels trained on
    clean: torch.Tensor | None  # (n,) int64: the clean labels, when known
    injection: NoiseInjection | None
    train_indices: torch.Tensor  # sorted positions of the training split
    val_indices: list[int]  # sorted positions of the validation split; [] without one


@dataclass
class DataSetup:
    """Everything a run resolved from its inputs: the device tensors of the training,
    validation and held-out splits, the class count, the pretrained checkpoint, the injected
    noise and the data fingerprint."""

    config: FinetuneConfig
    device: torch.device
    num_classes: int
    pretrained_record: Any
    pretrained_tensors: dict[str, torch.Tensor]
    train: Split
    val: Split | None
    heldout: Split | None
    data_summary: dict[str, Any]
    heldout_summary: dict[str, Any] | None
    data_fingerprint: str
    input_config: Any
    #: the noisy and clean labels of every loaded example, and the validation split
    labels: LabelSplit
    #: positions in ``config.data`` (all of it, before ``--samples``) of the training split's
    #: examples, and that source's size; None when they cannot be known (see
    #: :func:`hessaudit.robust.data_setup.source_positions`)
    train_source_indices: list[int] | None = None
    source_size: int | None = None

    @property
    def injection(self) -> NoiseInjection | None:
        """The injected noise (``--inject-noise``), or None."""
        return self.labels.injection

    @property
    def val_indices(self) -> list[int]:
        """Positions in the loaded data of the validation split's examples."""
        return self.labels.val_indices


@dataclass(frozen=True)
class NoiseMatrixChoice:
    """The noise matrix ``F`` the loss uses (None without ``--noise-matrix``), where it came
    from (``noise_matrix_source`` in ``config.json``) and, when it was estimated by this run,
    the estimation record for ``noise.json``."""

    matrix: np.ndarray | None = None
    source: str | None = None
    estimated: dict[str, Any] | None = None


# --------------------------------------------------------------------------- display protocol


class TrainingDisplay:
    """What :func:`run_finetune` reports while it runs. This base class ignores everything;
    ``hessaudit.report.training`` has the rich live display and the plain-log one."""

    def start(self, info: Mapping[str, Any]) -> None:
        """The run is set up (``info``: sizes, classes, loss, constraint, noise...)."""

    def log(self, message: str) -> None:
        """A progress message."""

    def warn(self, message: str) -> None:
        """Something the user should know."""

    def start_phase(self, name: str, *, epochs: int, first_epoch: int, steps: int) -> None:
        """A training phase begins: ``name`` is ``"fine-tune"`` or ``"estimate F (fold i/2)"``;
        epochs ``first_epoch..epochs`` remain, ``steps`` optimizer steps each."""

    def start_epoch(self, epoch: int) -> None:
        """An epoch begins."""

    def step(self, step: int, *, loss: float, acc: float) -> None:
        """Optimizer step ``step`` (1-based) of the epoch is done: running mean loss and
        accuracy on the training labels so far."""

    def end_epoch(self, row: Mapping[str, Any]) -> None:
        """An epoch is done and saved; ``row`` is its ``metrics.csv`` row."""

    def end_phase(self) -> None:
        """The phase is over."""

    def finish(self, result: FinetuneResult) -> None:
        """The run is over; show the summary."""


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class FinetuneResult:
    """What a run produced. ``metrics`` are the ``metrics.csv`` rows."""

    config: FinetuneConfig
    out: Path
    files: dict[str, str]
    metrics: list[dict[str, Any]]
    num_classes: int
    epochs_run: int
    best_epoch: int | None
    best_val_acc: float | None
    stopped_early: bool
    resumed_from: int | None
    new_tensors: list[str]
    unused_pretrained: list[str]
    noise_matrix: np.ndarray | None
    noise_matrix_source: str | None
    noise: NoiseInjection | None
    audit: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, Any]:
        return self.metrics[-1] if self.metrics else {}

    @property
    def initial(self) -> dict[str, Any]:
        return self.metrics[0] if self.metrics else {}

    def metrics_frame(self):
        """The metrics as a pandas DataFrame (columns :data:`METRIC_COLUMNS`)."""
        import pandas as pd

        return pd.DataFrame(self.metrics, columns=list(METRIC_COLUMNS))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "config": self.config.to_dict(),
            "out": str(self.out),
            "files": dict(self.files),
            "num_classes": self.num_classes,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "best_val_acc": self.best_val_acc,
            "stopped_early": self.stopped_early,
            "resumed_from": self.resumed_from,
            "new_tensors": list(self.new_tensors),
            "unused_pretrained": list(self.unused_pretrained),
            "noise_matrix": None if self.noise_matrix is None else self.noise_matrix.tolist(),
            "noise_matrix_source": self.noise_matrix_source,
            "noise": None if self.noise is None else self.noise.to_dict(),
            "metrics": [_jsonable_row(r) for r in self.metrics],
        }


def _jsonable_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = None
        else:
            out[key] = value
    return out
