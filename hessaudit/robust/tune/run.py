"""Automatic choice of the finetuner's radii, learning rate and loss options (``hessaudit tune``).

A seeded Optuna search (TPE sampler, median pruning) over a space of
:class:`~hessaudit.robust.config.FinetuneConfig` fields (:mod:`~hessaudit.robust.tune.space`).
Each trial is a short :func:`~hessaudit.robust.trainer.run_finetune` run in ``DIR/trials/NNNN``
(:mod:`~hessaudit.robust.tune.study`), scored on a validation split carved from ``--data``
whose labels are **as noisy as the training labels** (the clean labels the finetuner knows for
injected noise are never used to choose; :mod:`~hessaudit.robust.tune.scoring`). Then the best
parameters are trained to completion, exactly as ``hessaudit finetune`` would, in ``DIR/best``.

Objectives (``objective``):

* ``val-acc`` (default, maximized): accuracy on the noisy validation labels. Needs no noise
  matrix; under class-conditional noise whose diagonal dominates, it orders models as clean
  accuracy does in expectation (for symmetric noise at rate rho it is the affine, increasing
  map ``(1 - rho) acc + rho / (k - 1) (1 - acc)`` of clean accuracy).
* ``val-loss`` (minimized): the noise-corrected validation loss, the same backward correction
  ``sum_j (F^-1)[z, j] CE(f(x), j)`` as the training loss: an unbiased estimate of the clean
  validation cross-entropy, but with a high variance at high noise (``F^-1`` has large and
  negative entries). Needs ``F`` (``noise_matrix``), taken from each trial's checkpoint.
* ``bound`` (minimized): the Hessian generalization bound (``hessaudit measure``) of each
  trial's final weights against the pretrained ones, over the trial's training split with its
  noisy labels. No per-epoch values, so no pruning.

Reproducibility: the sampler of trial ``t`` is ``TPESampler(seed=derive(seed, t))`` (so a
resumed search draws what an uninterrupted one would), trials run one at a time, and every trial
fine-tunes with the search's own ``seed``: the finetuner derives the data subset, the injected
noise, the validation split, the head's init and the shuffling from ``seed``, so all trials see
the same data and labels and differ only by their parameters (common random numbers). A
``timeout`` makes the number of trials depend on the machine's speed.

The files in ``DIR`` are listed in :mod:`~hessaudit.robust.tune.folder`.
"""

from __future__ import annotations

import time
from typing import Any

from hessaudit.errors import HessauditError
from hessaudit.robust.tune.best import best_document
from hessaudit.robust.tune.folder import TuneFolder
from hessaudit.robust.tune.results import TrialRecord, TuneDisplay, TuneResult, best_of
from hessaudit.robust.tune.scoring import Scorer, StudyData, study_data, write_audit_data
from hessaudit.robust.tune.settings import DIRECTIONS, TuneSettings
from hessaudit.robust.tune.study import (
    finished_trials,
    import_optuna,
    open_study,
    record,
    run_trials,
)

__all__ = ["run_tune"]


def run_tune(
    settings: TuneSettings,
    *,
    display: TuneDisplay | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> TuneResult:
    """Run (or, with ``resume``, continue) the search described by ``settings``; see the
    module docstring. Raises :class:`HessauditError` for bad options, and when no trial
    completed."""
    display = display or TuneDisplay()
    optuna = import_optuna()
    settings = settings.validate()
    if resume and overwrite:
        raise HessauditError("--resume and --overwrite cannot be combined")
    folder = TuneFolder(settings.out)
    # one search per folder: a second `tune` into it stops at once, naming this one's pid
    with folder.lock():
        return _run_tune(settings, optuna, display, folder, resume=resume, overwrite=overwrite)


def _run_tune(
    settings: TuneSettings, optuna: Any, display: TuneDisplay, folder: TuneFolder, *,
    resume: bool, overwrite: bool,
) -> TuneResult:
    folder.check(settings, resume=resume, overwrite=overwrite)
    started = time.perf_counter()
    data = study_data(settings.base)
    scorer = Scorer(settings.base, data.val)
    folder.create(settings, resume=resume)
    if settings.objective == "bound" and not folder.audit_data.is_file():
        write_audit_data(folder.audit_data, data)
    storage, storage_path = folder.storage(optuna)
    study = open_study(optuna, settings, storage, resume=resume)
    done = finished_trials(study)
    display.start(_start_info(settings, data, done, storage_path))
    run_trials(study, optuna, settings, folder=folder, data=data, scorer=scorer,
               display=display, done=done, started=started)
    records = [record(t) for t in study.get_trials(deepcopy=False)]
    folder.write_trials(records, list(settings.space))
    return _finish(settings, display, folder, records, started, storage_path)


def _start_info(settings: TuneSettings, data: StudyData, done: int, storage: str) -> dict:
    """What :meth:`TuneDisplay.start` is told."""
    return {
        "out": str(settings.out),
        "objective": settings.objective,
        "direction": DIRECTIONS[settings.objective],
        "trials": settings.trials,
        "done": done,
        "trial_epochs": settings.epochs_per_trial,
        "final_epochs": settings.base.epochs,
        "space": {n: s.to_dict() for n, s in settings.space.items()},
        "val_size": len(data.val.val_indices),
        "train_size": len(data.val.train_indices),
        "storage": storage,
        "seed": settings.base.seed,
    }


def _finish(
    settings: TuneSettings, display: TuneDisplay, folder: TuneFolder,
    records: list[TrialRecord], started: float, storage: str,
) -> TuneResult:
    """Train the best trial's parameters to completion in ``DIR/best`` (unless
    ``final=False``), write ``best.json``, and return the result."""
    from hessaudit.robust.trainer import run_finetune

    out, base = settings.out, settings.base
    best_record = best_of(records, DIRECTIONS[settings.objective])
    if best_record is None:
        raise HessauditError(
            f"no trial completed ({len(records)} ran; see {out / 'trials.csv'})",
            hint="widen the search space, lower the learning rate range, or add trials",
        )
    best_config = base.replace(**best_record.params, out=str(folder.best))
    final = None
    if settings.final:
        display.log(
            f"training trial {best_record.number}'s parameters to completion "
            f"({base.epochs} epochs) in {folder.best}"
        )
        final = run_finetune(best_config, display=display.final_display(), overwrite=True)
    seconds = time.perf_counter() - started
    document = best_document(settings, records, best_record, best_config, final, seconds,
                             storage)
    folder.write_best(document)
    result = TuneResult(
        settings=settings, out=out, trials=records, best=best_record, best_config=best_config,
        final=final, seconds=seconds, document=document,
    )
    display.finish(result)
    return result
