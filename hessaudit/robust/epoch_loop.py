"""The fine-tuning phase of a run: epochs until ``--epochs`` or early stopping, each one saved.

:func:`fine_tune` trains the remaining epochs of a
:class:`~hessaudit.robust.training_run.TrainingRun` (Algorithm 1: a pass of the loss, each
optimizer step followed by the projection onto the per-layer Frobenius balls, the schedule
stepped once per epoch). After each epoch it writes, in this order and each atomically:
``metrics.csv``, ``best.safetensors`` (on a strictly better validation accuracy), ``state.pt``,
``last.safetensors``; a run killed anywhere resumes from the last ``state.pt``.
:func:`write_final` then writes ``final.safetensors`` (and ``best`` without a validation split).
"""

from __future__ import annotations

import time

from hessaudit.audit import distributed as _dist
from hessaudit.robust.epoch import batch_bounds, train_epoch
from hessaudit.robust.run_folder import RunFolder
from hessaudit.robust.training_run import TrainingRun
from hessaudit.robust.types import TrainingDisplay

__all__ = ["fine_tune", "write_final"]


def fine_tune(run: TrainingRun, folder: RunFolder, display: TrainingDisplay) -> None:
    """The remaining epochs; after each: metrics.csv, best.safetensors (on a better validation
    accuracy), state.pt, last.safetensors, in that order (each written atomically)."""
    config, setup = run.config, run.setup
    params = dict(run.model.named_parameters())

    def after_step() -> None:
        run.project_(params)

    steps = len(batch_bounds(len(setup.train), config.batch_size))
    display.start_phase("fine-tune", epochs=config.epochs, first_epoch=run.epoch + 1,
                        steps=steps)
    train_model = _dist.ddp(run.model, run.device)
    while run.epoch < config.epochs and not run.stopped_early:
        run.epoch += 1
        display.start_epoch(run.epoch)
        started = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        stats = train_epoch(
            train_model,
            setup.train,
            loss_fn=run.loss_fn,
            optimizer=run.optimizer,
            batch_size=config.batch_size,
            generator=run.shuffle,
            penalty=run.penalty_fn,
            after_step=after_step if run.radii else None,
            display=display,
            epoch=run.epoch,
        )
        if run.scheduler is not None:
            run.scheduler.step()
        row = run.row(stats, seconds=time.perf_counter() - started, lr=lr)
        if run.record_epoch(row):
            folder.save_weights(run, "best", extra={
                "selected_by": "best validation accuracy", "val_acc": run.best_val_acc,
            })
        folder.write_metrics(run.metrics)
        folder.save_state(run.state())
        folder.save_weights(run, "last")
        display.end_epoch(row)
        if run.stopped_early:
            display.log(
                f"early stopping after epoch {run.epoch}: no better validation accuracy for "
                f"{run.bad_epochs} epochs (best {run.best_val_acc:.4f} at epoch "
                f"{run.best_epoch})"
            )
    display.end_phase()


def write_final(
    run: TrainingRun, folder: RunFolder, *, rewrite_last: bool, display: TrainingDisplay
) -> None:
    """final.safetensors (and best.safetensors without a validation split) from the model as
    trained. ``rewrite_last`` (completing an interrupted run): also metrics.csv and
    last.safetensors, which a kill right after ``state.pt`` may have left one epoch behind."""
    out = folder.path
    if rewrite_last:
        folder.write_metrics(run.metrics)
        folder.save_weights(run, "last")
    folder.save_weights(run, "final")
    if run.setup.val is None:
        run.best_epoch = run.epoch
        folder.save_weights(run, "best", extra={"selected_by": "final epoch (no validation split)"})
    elif not (out / "best.safetensors").is_file() and _dist.is_main():
        display.warn(f"{out / 'best.safetensors'} is missing and cannot be rebuilt (the best "
                     f"epoch was {run.best_epoch}; state.pt holds epoch {run.epoch})")
