"""Robust fine-tuning under label noise: the paper's Algorithm 1 and its baselines.

:func:`run_finetune` takes a :class:`~hessaudit.robust.config.FinetuneConfig` and writes a run
folder (``config.out``: ``config.json``, ``metrics.csv``, the ``final``/``best``/``last``
checkpoints, ``state.pt``, ``noise.json``, ``audit.json``, ``finished.json``). This module
only orchestrates; each step has its own module:

* the folder, its files and its lock: :class:`~hessaudit.robust.run_folder.RunFolder`; what a
  resume checks and still has to do: :mod:`hessaudit.robust.resume`;
* the data, the noise injection and the validation split:
  :func:`~hessaudit.robust.data_setup.prepare_data`;
* the noise matrix ``F`` (estimated by cross-fitting when asked):
  :mod:`hessaudit.robust.noise_estimate`;
* the model, optimizer, schedule, RNG, metrics and best-so-far:
  :class:`~hessaudit.robust.training_run.TrainingRun`; the epochs:
  :mod:`hessaudit.robust.epoch_loop` (one epoch: :mod:`hessaudit.robust.epoch`);
* ``config.json``'s record, ``noise.json`` and the audit: :mod:`hessaudit.robust.records`;
* the per-purpose seeds: :mod:`hessaudit.robust._seeds`; the shared types:
  :mod:`hessaudit.robust.types`.

Model setup: the model is built with ``k`` classes (``num_classes``, default the data's), every
pretrained tensor whose name and shape match is loaded, and the tensors that don't (the new
head) are initialized from the seed with hessaudit's own ``torch.Generator`` (Kaiming-uniform
weights, as ``nn.Linear``/``nn.Conv`` do; uniform biases; unit/zero normalization). Training
runs in train mode (BatchNorm statistics update, as in standard fine-tuning), evaluation in eval
mode.

Reproducibility: shuffling, initialization, the validation split and the noise estimation draw
from generators seeded from ``seed`` (the noise injection from ``noise_seed``, default
``seed``). The global torch RNG (used by dropout) is seeded too, inside ``fork_rng``, so the
caller's global state is left untouched. ``resume`` restores all of it, so an interrupted run
resumed on the CPU reaches bit-identical final weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from hessaudit.audit import distributed as _dist
from hessaudit.inputs.devices import resolve_device
from hessaudit.inputs.hf_models import is_hf_model_dir
from hessaudit.robust._seeds import derive_seed
from hessaudit.robust.config import FinetuneConfig, parse_penalty
from hessaudit.robust.data_setup import prepare_data
from hessaudit.robust.epoch_loop import fine_tune, write_final
from hessaudit.robust.hf_outputs import check_hf_folders, hf_model_of
from hessaudit.robust.noise_estimate import resolve_noise_matrix
from hessaudit.robust.projection import load_radius_table
from hessaudit.robust.records import (
    audit_final_checkpoint,
    noise_document,
    run_info,
    training_labels,
)
from hessaudit.robust.resume import (
    ResumePlan,
    check_resume_inputs,
    check_resume_options,
    load_run_config,
    resume_config,
    resume_plan,
)
from hessaudit.robust.run_folder import OUTPUT_NAMES, RunFolder
from hessaudit.robust.training_run import TrainingRun
from hessaudit.robust.trust import factory_record
from hessaudit.robust.types import (
    METRIC_COLUMNS,
    FinetuneResult,
    TrainingDisplay,
)

__all__ = [
    "METRIC_COLUMNS",
    "OUTPUT_NAMES",
    "FinetuneResult",
    "TrainingDisplay",
    "derive_seed",
    "load_run_config",
    "resume_config",
    "run_finetune",
]


def run_finetune(
    config: FinetuneConfig,
    *,
    display: TrainingDisplay | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> FinetuneResult:
    """Fine-tune ``config.model`` from ``config.pretrained`` on ``config.data``; see the module
    docstring for what is written.

    ``resume=True`` continues the run in ``config.out`` from its last per-epoch checkpoint, or
    completes its final outputs and audit when training was done (see :func:`resume_config` to
    build the config, and :mod:`hessaudit.robust.resume`); without ``resume`` or
    ``overwrite`` an existing non-empty ``config.out`` is an error. ``overwrite=True`` deletes
    only the files a run writes (:data:`OUTPUT_NAMES`). The folder is locked for the whole run
    (:mod:`hessaudit.robust._lock`): a second run into it fails at once.

    Raises:
        HessauditError: any bad option or input, naming the flag or file at fault.
    """
    display = display or TrainingDisplay()
    ctx = _dist.init(config.device)  # torchrun: join the job; rank 0 alone writes and reports
    if not ctx.is_main:
        return _run(config, TrainingDisplay(), ctx, resume=resume, overwrite=overwrite)
    folder = RunFolder(config.out)
    folder.check(resume=resume, overwrite=overwrite)  # fail before creating anything
    if is_hf_model_dir(str(config.model)):  # it writes final/ and best/: never over a user's
        check_hf_folders(folder.path)
    with folder.lock(flag="--resume" if resume else "--out"):
        folder.check(resume=resume, overwrite=overwrite)  # again, now that we own it
        return _run(config, display, ctx, resume=resume, overwrite=overwrite)


def _run(
    config: FinetuneConfig,
    display: TrainingDisplay,
    ctx: Any,
    *,
    resume: bool,
    overwrite: bool,
) -> FinetuneResult:
    """The run, in its folder (locked by the caller on rank 0)."""
    config = config.resolved()
    folder = RunFolder(config.out)
    if resume:
        check_resume_options(config, folder)  # the factory file is checked before any import
    device = resolve_device(_dist.local_device(config.device, ctx))
    radius_table = load_radius_table(config.radius_table) if config.radius_table else None
    penalty_spec = parse_penalty(config.penalty)

    state = folder.load_state() if resume and folder.has_state() else None
    plan = resume_plan(folder, config, state, folder.read_finished() if resume else None)
    factory = factory_record(config.model)  # hashed before its first import

    with _seeded_global_rng(config.seed, device):
        setup = prepare_data(config, device, log=display.log)
        if resume:
            check_resume_inputs(folder, setup)
        saved_F = None if state is None else state.get("noise_matrix")
        noise = resolve_noise_matrix(setup, display, saved_F)
        run = TrainingRun.create(
            setup, noise, penalty_spec=penalty_spec, radius_table=radius_table, device=device,
            warn=display.warn,
        )
        info = run_info(run, penalty_spec)
        info["model_factory"] = factory
        _start_folder(folder, run, info, state, resume=resume, overwrite=overwrite)
        display.start({**info, "config": config.to_dict(), "noise_matrix_source": noise.source})

        resumed_from = _restore_or_start(run, folder, state, plan, display)
        if plan.train:
            fine_tune(run, folder, display)
        if plan.weights:
            write_final(run, folder, rewrite_last=not plan.train, display=display)

    audit_doc = None
    if plan.audit:
        audit_doc = audit_final_checkpoint(config, setup, folder.path, display)
    files = folder.write_finished(config, epoch=run.epoch, stopped_early=run.stopped_early,
                                  best_epoch=run.best_epoch)
    result = _result(run, folder.path, files, resumed_from, audit_doc, info)
    display.finish(result)
    return result


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, "global"))
        yield


def _start_folder(
    folder: RunFolder,
    run: TrainingRun,
    info: Mapping[str, Any],
    state: Mapping[str, Any] | None,
    *,
    resume: bool,
    overwrite: bool,
) -> None:
    """The run is set up: prepare the folder (the previous outputs go only now), mark it
    unfinished, write ``config.json`` and, for a new run with injected or estimated noise,
    ``noise.json``."""
    setup, noise = run.setup, run.noise
    if hf_model_of(run.model) is not None:  # never over a final/ or best/ of the user's
        check_hf_folders(folder.path)
    folder.prepare(resume=resume, overwrite=overwrite)
    folder.remove_finished()  # not finished until the marker is written again, last
    folder.write_config(run.config, info, state, resume=resume)
    if state is None and (setup.injection is not None or noise.estimated is not None):
        folder.write_json(
            "noise.json",
            noise_document(setup.injection, noise.matrix, noise.source, noise.estimated,
                           training_labels=training_labels(setup)),
        )


def _restore_or_start(
    run: TrainingRun,
    folder: RunFolder,
    state: Mapping[str, Any] | None,
    plan: ResumePlan,
    display: TrainingDisplay,
) -> int | None:
    """Continue from ``state`` (the epoch it holds), or evaluate the starting point (row 0 of
    metrics.csv) of a new run (None)."""
    if state is None:
        run.metrics.append(run.row({}, seconds=0.0))
        folder.write_metrics(run.metrics)
        return None
    run.restore(state)
    if plan.train:
        display.log(f"resuming {folder.path} after epoch {run.epoch}")
    else:
        display.log(f"resuming {folder.path}: training ended at epoch {run.epoch}; "
                    "completing the final outputs")
    return run.epoch


def _result(
    run: TrainingRun,
    out: Path,
    files: dict[str, str],
    resumed_from: int | None,
    audit: dict[str, Any] | None,
    info: dict[str, Any],
) -> FinetuneResult:
    """What the run produced (``metrics``: every ``metrics.csv`` row, resumed ones included)."""
    noise = run.noise
    return FinetuneResult(
        config=run.config,
        out=out,
        files=files,
        metrics=run.metrics,
        num_classes=run.setup.num_classes,
        epochs_run=run.epoch,
        best_epoch=run.best_epoch,
        best_val_acc=run.best_val_acc,
        stopped_early=run.stopped_early,
        resumed_from=resumed_from,
        new_tensors=list(run.build.new),
        unused_pretrained=list(run.build.unused),
        noise_matrix=noise.matrix,
        noise_matrix_source=noise.source,
        noise=run.setup.injection,
        audit=audit,
        info=info,
    )
