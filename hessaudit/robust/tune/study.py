"""The Optuna study of a search: its sampler and pruner, the trials, and their scores.

* :func:`open_study`: the study in the folder's storage, median pruning (or none); trials an
  interrupted search left running are marked failed (they count towards the budget);
* :func:`run_trials`: asks for trials until the budget (``trials``, ``timeout``) is spent. The
  sampler of trial ``t`` is ``TPESampler(seed=trial_seed(seed, t))``, so a resumed search draws
  what an uninterrupted one would;
* :func:`run_trial`: one short ``run_finetune`` in ``DIR/trials/NNNN``, scored by the
  objective; :class:`TrialWatcher` scores each epoch and prunes.

Optuna is an optional dependency (``pip install "hessaudit[tune]"``), imported only when a
search runs.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hessaudit.errors import HessauditError
from hessaudit.robust.tune.folder import TuneFolder
from hessaudit.robust.tune.results import METRIC_KEYS, TrialRecord, TuneDisplay, best_of
from hessaudit.robust.tune.scoring import Scorer, StudyData, audit_bound
from hessaudit.robust.tune.settings import DIRECTIONS, TuneSettings
from hessaudit.robust.types import TrainingDisplay

__all__ = [
    "STUDY_NAME", "TrialWatcher", "finished_trials", "import_optuna", "open_study", "record",
    "run_trial", "run_trials", "trial_seed",
]

STUDY_NAME = "hessaudit-tune"
#: The metric each objective optimizes.
OBJECTIVE_METRIC = {"val-acc": "val_acc", "val-loss": "val_loss_corrected", "bound": "bound"}


def import_optuna() -> Any:
    """The ``optuna`` module, quiet; a clear error when it is not installed."""
    try:
        import optuna
    except ImportError:
        raise HessauditError(
            "hessaudit tune needs Optuna, which is not installed",
            hint='pip install "hessaudit[tune]"',
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def trial_seed(seed: int, number: int) -> int:
    """The TPE sampler's seed for trial ``number`` of a search seeded with ``seed``."""
    digest = hashlib.sha256(f"hessaudit-tune:{int(seed)}:{int(number)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def open_study(optuna: Any, settings: TuneSettings, storage: Any, *, resume: bool) -> Any:
    """The study (loaded when ``resume``); trials left RUNNING by an interrupted search failed."""
    from optuna.trial import TrialState

    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=min(3, settings.n_startup),
            n_warmup_steps=max(1, settings.epochs_per_trial // 3),
        )
        if settings.pruning
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=storage, direction=DIRECTIONS[settings.objective],
        pruner=pruner, load_if_exists=resume,
    )
    # trials left RUNNING by an interrupted search failed; they count towards the budget
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted")
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    return study


def finished_trials(study: Any) -> int:
    """How many trials are over (complete, pruned or failed)."""
    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return len(study.get_trials(deepcopy=False, states=finished))


def record(trial: Any) -> TrialRecord:
    """The ``trials.csv`` row of an Optuna trial."""
    state = trial.state.name.lower()
    seconds = None
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    attrs = dict(trial.user_attrs)
    value = trial.value if state == "complete" else None
    return TrialRecord(
        number=trial.number,
        state=state,
        score=value,
        params=dict(trial.params),
        metrics={k: attrs.get(k) for k in METRIC_KEYS},
        seconds=seconds,
        error=attrs.get("error"),
    )


class TrialWatcher(TrainingDisplay):
    """The finetune display of one trial: scores every fine-tuning epoch's checkpoint on the
    noisy validation split, reports it to Optuna and prunes; shows nothing else."""

    def __init__(
        self, *, trial: Any, scorer: Scorer, settings: TuneSettings, display: TuneDisplay,
        out: Path,
    ) -> None:
        self._phase = ""
        self.trial = trial
        self.scorer = scorer
        self.settings = settings
        self.display = display
        self.out = out
        self.last: dict[str, float] = {}
        self.last_row: dict[str, Any] = {}

    def start_phase(self, name: str, **kwargs: Any) -> None:
        self._phase = name

    def end_epoch(self, row: Mapping[str, Any]) -> None:
        if self._phase != "fine-tune":
            return
        optuna = import_optuna()
        epoch = int(row["epoch"])
        metrics = self.scorer.score(self.out / "last.safetensors")
        self.last = metrics
        self.last_row = dict(row)
        self.display.trial_epoch(self.trial.number, epoch, self.settings.epochs_per_trial, metrics)
        key = {"val-acc": "val_acc", "val-loss": "val_loss_corrected"}.get(
            self.settings.objective
        )
        if key is None:
            return
        value = metrics[key]
        if math.isfinite(value):
            self.trial.report(value, epoch)
            last = epoch >= self.settings.epochs_per_trial  # nothing left to save
            if self.settings.pruning and not last and self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch} ({key} {value:.4f})")



def run_trials(
    study: Any,
    optuna: Any,
    settings: TuneSettings,
    *,
    folder: TuneFolder,
    data: StudyData,
    scorer: Scorer,
    display: TuneDisplay,
    done: int,
    started: float,
) -> None:
    """Run trials one at a time until ``settings.trials`` are over (``done`` already are) or
    ``settings.timeout`` seconds since ``started`` are spent; ``trials.csv`` is rewritten
    after each."""
    names = list(settings.space)
    direction = DIRECTIONS[settings.objective]
    while done < settings.trials:
        if settings.timeout is not None and time.perf_counter() - started >= settings.timeout:
            display.log(f"timeout: {settings.timeout:g} s spent, no new trial started")
            break
        number = len(study.get_trials(deepcopy=False))
        study.sampler = optuna.samplers.TPESampler(
            seed=trial_seed(settings.base.seed, number), n_startup_trials=settings.n_startup
        )
        trial = study.ask()
        run_trial(study, trial, optuna, settings, folder=folder, data=data, scorer=scorer,
                  display=display)
        done += 1
        records = [record(t) for t in study.get_trials(deepcopy=False)]
        folder.write_trials(records, names)
        display.end_trial(records[-1] if records else None, best_of(records, direction))


def run_trial(
    study: Any,
    trial: Any,
    optuna: Any,
    settings: TuneSettings,
    *,
    folder: TuneFolder,
    data: StudyData,
    scorer: Scorer,
    display: TuneDisplay,
) -> None:
    """Draw ``trial``'s parameters, fine-tune with them for ``settings.epochs_per_trial``
    epochs in ``DIR/trials/NNNN``, score it and tell the study. A trial that diverges, fails
    or scores NaN is failed, not fatal."""
    from optuna.trial import TrialState

    from hessaudit.robust.trainer import run_finetune

    params = {name: spec.suggest(trial) for name, spec in settings.space.items()}
    display.start_trial(trial.number, params)
    trial_out = folder.trial(trial.number)
    config = settings.base.replace(
        **params, out=str(trial_out), epochs=settings.epochs_per_trial, audit=False,
        early_stop=None,
    )
    watcher = TrialWatcher(
        trial=trial, scorer=scorer, settings=settings, display=display, out=trial_out,
    )
    state, value = TrialState.COMPLETE, None
    try:
        result = run_finetune(config, display=watcher, overwrite=True)
        metrics = dict(watcher.last)
        if settings.objective == "bound":
            metrics["bound"] = audit_bound(
                settings.base, trial_out, folder.audit_data, len(data.val.train_indices),
                data.val.num_classes,
            )
        value = metrics.get(OBJECTIVE_METRIC[settings.objective])
        trial.set_user_attr("epochs_run", result.epochs_run)
        if value is None or not math.isfinite(value):
            state = TrialState.FAIL
            trial.set_user_attr("error", f"the score is {value}")
    except optuna.TrialPruned:
        state = TrialState.PRUNED
        metrics = dict(watcher.last)
        trial.set_user_attr("epochs_run", int(watcher.last_row.get("epoch", 0)))
    except RuntimeError as exc:
        state, metrics = TrialState.FAIL, dict(watcher.last)
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
    except (HessauditError, ValueError, ArithmeticError) as exc:
        state, metrics = TrialState.FAIL, dict(watcher.last)
        trial.set_user_attr("error", str(exc).splitlines()[0][:300] if str(exc) else
                            type(exc).__name__)
    _keep_metrics(trial, metrics, watcher.last_row)
    if state == TrialState.COMPLETE:
        study.tell(trial, float(value))
    else:
        study.tell(trial, state=state)


def _keep_metrics(trial: Any, metrics: Mapping[str, Any], row: Mapping[str, Any]) -> None:
    """The trial's finite scores, and the finetuner's clean validation and held-out accuracy
    of its last epoch, as user attributes (``trials.csv``'s metric columns)."""
    for k in ("val_acc", "val_loss", "val_loss_corrected", "bound"):
        v = metrics.get(k)
        if v is not None and math.isfinite(v):
            trial.set_user_attr(k, float(v))
    for k, col in (("val_acc_clean", "val_acc"), ("heldout_acc", "heldout_acc")):
        v = row.get(col)
        if isinstance(v, float) and math.isfinite(v):
            trial.set_user_attr(k, v)
