"""What a search produces and reports: :class:`TrialRecord` (a row of ``trials.csv``),
:class:`TuneResult`, and :class:`TuneDisplay`, the progress protocol :func:`run_tune` calls
(``hessaudit.report.tuning`` has the rich and the plain one)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.tune.settings import TuneSettings

__all__ = ["METRIC_KEYS", "TrialRecord", "TuneDisplay", "TuneResult", "best_of"]

#: The metric columns of ``trials.csv``, in order.
METRIC_KEYS = (
    "val_acc",
    "val_loss_corrected",
    "val_loss",
    "bound",
    "epochs_run",
    "val_acc_clean",
    "heldout_acc",
)


@dataclass(frozen=True)
class TrialRecord:
    """One row of ``trials.csv``."""

    number: int
    state: str
    score: float | None
    params: dict[str, Any]
    metrics: dict[str, Any]
    seconds: float | None
    error: str | None = None

    def row(self, names: list[str]) -> dict[str, Any]:
        row: dict[str, Any] = {"number": self.number, "state": self.state, "score": self.score}
        for name in names:
            row[f"param_{name}"] = self.params.get(name)
        for key in METRIC_KEYS:
            row[key] = self.metrics.get(key)
        row["seconds"] = self.seconds
        row["error"] = self.error
        return row


def best_of(records: list[TrialRecord], direction: str) -> TrialRecord | None:
    """The complete trial with the best score (the lowest number among equal scores)."""
    complete = [r for r in records if r.state == "complete" and r.score is not None]
    if not complete:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(complete, key=lambda r: (sign * r.score, r.number))


@dataclass(frozen=True)
class TuneResult:
    """A finished search: its trials, the best one, and the final run (``final``, a
    ``FinetuneResult`` of ``DIR/best``, None with ``final=False``); ``document`` is
    ``best.json``."""

    settings: TuneSettings
    out: Path
    trials: list[TrialRecord]
    best: TrialRecord | None
    best_config: FinetuneConfig | None
    final: Any = None  # FinetuneResult of DIR/best
    seconds: float = 0.0
    document: dict[str, Any] = field(default_factory=dict)


class TuneDisplay:
    """What :func:`~hessaudit.robust.tune.run.run_tune` reports (every method does nothing
    here); ``hessaudit.report.tuning`` has the rich one."""

    def start(self, info: Mapping[str, Any]) -> None:
        """The search is set up."""

    def log(self, message: str) -> None:
        """A progress message."""

    def warn(self, message: str) -> None:
        """Something the user should know."""

    def start_trial(self, number: int, params: Mapping[str, Any]) -> None:
        """Trial ``number`` starts with ``params``."""

    def trial_epoch(self, number: int, epoch: int, epochs: int, metrics: Mapping[str, Any]) -> None:
        """An epoch of the trial is done (``metrics``: the validation scores)."""

    def end_trial(self, record: TrialRecord, best: TrialRecord | None) -> None:
        """A trial is over (complete, pruned or failed)."""

    def final_display(self) -> Any:
        """The :class:`~hessaudit.robust.trainer.TrainingDisplay` of the final run."""
        return None

    def finish(self, result: TuneResult) -> None:
        """The search and the final run are over."""
