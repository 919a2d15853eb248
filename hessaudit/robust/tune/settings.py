"""The settings of one search (``hessaudit tune``): :class:`TuneSettings`, validated once.

``base`` is the finetune config every trial starts from (``base.out`` is the search folder,
``base.epochs`` the final run's epochs); the other fields say how long to search and what to
optimize. :meth:`TuneSettings.to_dict` is ``tune.json``; a resumed search must match it except
for :data:`RESUMABLE`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessaudit.errors import HessauditError
from hessaudit.inputs.text_options import is_text_file
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.tune.space import NOT_TUNABLE, ParamSpec

__all__ = ["DIRECTIONS", "OBJECTIVES", "RESUMABLE", "TuneSettings"]

OBJECTIVES = ("val-acc", "val-loss", "bound")
DIRECTIONS = {"val-acc": "maximize", "val-loss": "minimize", "bound": "minimize"}
#: Settings that may change when a search is resumed.
RESUMABLE = ("trials", "timeout", "final", "pruning")


@dataclass(frozen=True)
class TuneSettings:
    """A search: ``base`` is the finetune config every trial starts from (``base.out`` is the
    search folder DIR; ``base.epochs`` the final run's epochs)."""

    base: FinetuneConfig
    space: dict[str, ParamSpec]
    trials: int = 20
    timeout: float | None = None
    objective: str = "val-acc"
    trial_epochs: int | None = None
    pruning: bool = True
    startup_trials: int | None = None
    final: bool = True

    @property
    def out(self) -> Path:
        return Path(self.base.out)

    @property
    def epochs_per_trial(self) -> int:
        if self.trial_epochs is not None:
            return self.trial_epochs
        return max(1, math.ceil(self.base.epochs / 3))

    @property
    def n_startup(self) -> int:
        if self.startup_trials is not None:
            return self.startup_trials
        return max(2, min(10, self.trials // 3))

    def validate(self) -> TuneSettings:
        base = self.base.resolved()
        if base.val_fraction is None:
            raise HessauditError("--val-fraction is required (the trials are scored on it)")
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise HessauditError(f"--trials {self.trials} must be an integer >= 1")
        if self.timeout is not None and not (self.timeout > 0):
            raise HessauditError(f"--timeout {self.timeout} must be > 0 seconds")
        if self.objective not in OBJECTIVES:
            raise HessauditError(
                f"--objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}"
            )
        if self.trial_epochs is not None and self.trial_epochs < 1:
            raise HessauditError(f"--trial-epochs {self.trial_epochs} must be >= 1")
        if self.startup_trials is not None and self.startup_trials < 1:
            raise HessauditError(f"--startup-trials {self.startup_trials} must be >= 1")
        if self.objective == "val-loss" and base.noise_matrix is None:
            raise HessauditError(
                "--objective val-loss needs the noise matrix F for the corrected loss",
                hint="pass --noise-matrix (symmetric:RATE, a file, 'estimate' or 'injected'); "
                "it is recorded but not used for training by losses other than reweight/forward",
            )
        if self.objective == "bound" and is_text_file(base.data):
            raise HessauditError(
                "--objective bound is not available for text data yet (the trials' audit "
                "reads image arrays)", hint="use --objective val-acc or val-loss",
            )
        if not self.space:
            raise HessauditError(
                "nothing to search: every parameter is fixed or removed",
                hint="drop a fixed option from the command line, or add parameters in --space",
            )
        for name, spec in self.space.items():
            if name in NOT_TUNABLE:  # every trial must see the same data, labels and split
                raise HessauditError(f"search space: {name} cannot be searched")
            probe = {name: spec.choices[0] if spec.kind == "categorical" else spec.low}
            if spec.kind == "int":
                probe = {name: int(spec.low)}
            try:
                base.replace(**probe).resolved()
            except HessauditError as exc:
                raise HessauditError(f"search space: {name} = {probe[name]!r}: {exc}") from None
            except TypeError:
                raise HessauditError(f"search space: {name} is not a finetune option") from None
        return dataclasses.replace(self, base=base)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base.to_dict(),
            "space": {name: spec.to_dict() for name, spec in self.space.items()},
            "trials": self.trials,
            "timeout": self.timeout,
            "objective": self.objective,
            "trial_epochs": self.epochs_per_trial,
            "pruning": self.pruning,
            "startup_trials": self.n_startup,
            "final": self.final,
        }
