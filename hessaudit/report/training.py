"""What ``hessaudit finetune`` shows: a rich live display, or plain log lines with ``--quiet``.

* :class:`RichTrainingDisplay`: epoch and step progress bars on stderr (running loss and
  accuracy on the training labels, elapsed time and time left), one line per finished epoch,
  and one summary table on stdout at the end.
* :class:`LogTrainingDisplay`: the same events as plain lines on stderr, no bars, no table.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from hessaudit.report import _layout
from hessaudit.report._format import fmt_fraction, fmt_metric
from hessaudit.report.console import print_table, stderr, stdout, table_width
from hessaudit.report.escape import console_text, visible
from hessaudit.report.plain_progress import PlainProgress
from hessaudit.report.progress import live_bar
from hessaudit.robust.types import FinetuneResult, TrainingDisplay

__all__ = ["LogTrainingDisplay", "RichTrainingDisplay", "summary_rows", "training_display"]


def start_lines(info: Mapping[str, Any]) -> list[str]:
    """The run's set-up, in a few plain lines."""
    config = info.get("config", {})
    lines = [
        f"fine-tuning {config.get('model')} from {config.get('pretrained')} on "
        f"{config.get('data')}: {info.get('num_classes')} classes, {info.get('train_size')} "
        f"training / {info.get('val_size')} validation / {info.get('heldout_size')} held-out "
        f"examples, device {info.get('device')}",
    ]
    constraint = info.get("constraint")
    detail = (
        f"{constraint} ({info.get('constrained_layers')} tensors, radius "
        f"{config.get('radius')}, growth {config.get('radius_growth')}, head radius "
        f"{config.get('head_radius') if config.get('head_radius') is not None else 'none'}"
        + "".join(
            f", {group} radius {config.get(f'radius_{group}')}"
            for group in ("attention", "linear") if config.get(f"radius_{group}") is not None
        )
        + ")"
        if constraint == "frobenius"
        else "none"
    )
    lines.append(
        f"loss {config.get('loss')}, noise matrix {info.get('noise_matrix_source') or 'none'}, "
        f"constraint {detail}, penalty {config.get('penalty') or 'none'}"
    )
    schedule = info.get("schedule") or {}
    lines.append(
        f"optimizer {config.get('optimizer')}, lr {config.get('lr')}, weight decay "
        f"{config.get('weight_decay')}, schedule {config.get('schedule')}"
        + (f" (warm-up {schedule['warmup_steps']} of {schedule['total_steps']} steps)"
           if "warmup_steps" in schedule else "")
    )
    new = info.get("new_tensors") or []
    lines.append(
        f"{info.get('loaded_tensors')} tensors loaded from the pretrained checkpoint; "
        f"new (seeded init): {', '.join(new) if new else 'none'}"
    )
    injected = info.get("injected_noise")
    if injected:
        lines.append(
            f"injected noise {injected['spec']}: {injected['num_flipped']} labels flipped "
            f"(realized rate {injected['realized_rate']:.4f})"
        )
    return lines


def epoch_line(row: Mapping[str, Any], *, total: int | None = None) -> str:
    """One finished epoch as a plain line."""
    epoch = row.get("epoch")
    head = f"epoch {epoch}/{total}" if total else f"epoch {epoch}"
    parts = [
        f"{head}: train loss {fmt_metric(row.get('train_loss'))} "
        f"acc {fmt_metric(row.get('train_acc'))}",
    ]
    if row.get("val_acc") is not None and fmt_metric(row.get("val_acc")) != "-":
        parts.append(
            f"val acc {fmt_metric(row.get('val_acc'))} loss {fmt_metric(row.get('val_loss'))}"
        )
    if row.get("heldout_acc") is not None and fmt_metric(row.get("heldout_acc")) != "-":
        parts.append(
            f"held-out acc {fmt_metric(row.get('heldout_acc'))} "
            f"loss {fmt_metric(row.get('heldout_loss'))}"
        )
    if fmt_metric(row.get("max_radius_ratio")) != "-":
        parts.append(f"max dist/radius {fmt_metric(row.get('max_radius_ratio'), 3)}")
    elif fmt_metric(row.get("max_distance")) != "-":
        parts.append(f"max dist {fmt_metric(row.get('max_distance'), 3)}")
    if row.get("seconds") is not None:
        parts.append(f"{float(row['seconds']):.1f}s")
    return " | ".join(parts)


def summary_rows(result: FinetuneResult) -> list[tuple[str, str]]:
    """The summary table's (quantity, value) rows."""
    initial, final = result.initial, result.final
    rows: list[tuple[str, str]] = []
    stop = " (early stop)" if result.stopped_early else ""
    resumed = f", resumed after epoch {result.resumed_from}" if result.resumed_from else ""
    rows.append(("epochs run", f"{result.epochs_run}{stop}{resumed}"))
    if result.best_val_acc is not None:
        rows.append(
            (
                "best epoch (validation acc.)",
                f"{result.best_epoch} ({fmt_fraction(result.best_val_acc, 2)})",
            )
        )
    else:
        rows.append(("best epoch", f"{result.best_epoch} (final: no validation split)"))
    if fmt_metric(final.get("heldout_acc")) != "-":
        rows.append(
            (
                "held-out accuracy (start -> final)",
                f"{fmt_fraction(initial.get('heldout_acc'), 2)} -> "
                f"{fmt_fraction(final.get('heldout_acc'), 2)}",
            )
        )
    if fmt_metric(final.get("val_acc")) != "-":
        rows.append(("validation accuracy (final)", fmt_fraction(final.get("val_acc"), 2)))
    rows.append(
        ("training accuracy, training labels (final)", fmt_fraction(final.get("train_acc"), 2))
    )
    if fmt_metric(final.get("train_acc_clean")) != "-":
        rows.append(
            ("training accuracy, clean labels (final)",
             fmt_fraction(final.get("train_acc_clean"), 2))
        )
    config = result.config
    rows.append(("loss", config.loss))
    rows.append(("noise matrix", result.noise_matrix_source or "none"))
    if result.noise is not None:
        rows.append(
            (
                "injected noise",
                f"{result.noise.spec}: realized rate {result.noise.realized_rate:.4f}",
            )
        )
    rows.append(("constraint", config.constraint or "none"))
    if fmt_metric(final.get("max_radius_ratio")) != "-":
        rows.append(("largest distance / radius", fmt_metric(final.get("max_radius_ratio"), 3)))
    if fmt_metric(final.get("max_distance")) != "-":
        rows.append(
            (
                "largest layer distance",
                f"{fmt_metric(final.get('max_distance'), 4)} ({final.get('max_distance_layer')})",
            )
        )
    if result.audit is not None:
        audit = result.audit
        if isinstance(audit.get("bound"), Mapping):  # nested layout
            audit = {**audit, **audit["bound"]}
        if isinstance(audit.get("hessian_term"), (int, float)):
            rows.append(("audit: Hessian term G", fmt_metric(float(audit["hessian_term"]))))
        if isinstance(audit.get("bound"), (int, float)):
            rows.append(("audit: bound (xi not included)", fmt_metric(float(audit["bound"]))))
    rows.append(("outputs", str(result.out)))
    return rows


def summary_table(result: FinetuneResult, width: int | None = None) -> Table:
    """:func:`summary_rows` as a table for ``width`` cells (``None``: as wide as it needs)."""
    rows = summary_rows(result)
    columns = [
        _layout.Column("quantity", "quantity", [key for key, _ in rows], "left", "prose"),
        _layout.Column("value", "value", [visible(v) for _, v in rows], "left", "prose"),
    ]
    title = f"hessaudit finetune: {console_text(result.out)}"
    table, _ = _layout.fit_table(columns, width, title=title)
    return table


class RichTrainingDisplay(TrainingDisplay):
    """Live progress bars on stderr and a summary table on stdout."""

    def __init__(self, console: Console | None = None, out: Console | None = None) -> None:
        self._console = console  # progress and logs (default: stderr)
        self._out = out  # the summary table (default: stdout)
        self._progress: Progress | None = None
        self._epoch_task: TaskID | None = None
        self._step_task: TaskID | None = None
        self._epochs = 0
        self._phase = ""
        self._steps = 0
        # stderr is not a terminal (a CI log): the bars draw nothing there, so long epochs
        # get rate-limited plain step lines (hessaudit.report.plain_progress).
        self._plain: PlainProgress | None = None

    def _print(self, message: str, style: str | None = None) -> None:
        console = self._progress.console if self._progress is not None else self._err()
        console.print(visible(message), style=style, markup=False, highlight=False)

    def _err(self) -> Console:
        return self._console or stderr()

    def start(self, info: Mapping[str, Any]) -> None:
        for line in start_lines(info):
            self._print(line)

    def log(self, message: str) -> None:
        self._print(message)

    def warn(self, message: str) -> None:
        console = self._progress.console if self._progress is not None else self._err()
        console.print(
            f"[yellow]warning:[/yellow] {console_text(message)}", markup=True, highlight=False
        )

    def start_phase(self, name: str, *, epochs: int, first_epoch: int, steps: int) -> None:
        self.end_phase()
        self._epochs = epochs
        self._phase = name
        self._steps = steps
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            live_bar(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=self._err(),
            transient=True,
        )
        self._epoch_task = self._progress.add_task(
            name, total=epochs, completed=first_epoch - 1, stats=""
        )
        self._step_task = self._progress.add_task("steps", total=steps, stats="")
        self._progress.start()

    def start_epoch(self, epoch: int) -> None:
        if self._progress is None or self._step_task is None:
            return
        if not self._progress.console.is_terminal:
            prefix = "" if self._phase == "fine-tune" else f"[{self._phase}] "
            self._plain = PlainProgress(
                f"{prefix}epoch {epoch}/{self._epochs} steps", closing_line=False
            )
        self._progress.reset(
            self._step_task, description=f"epoch {epoch}/{self._epochs}", stats=""
        )

    def step(self, step: int, *, loss: float, acc: float) -> None:
        if self._plain is not None:
            self._plain.update(step, self._steps, f"loss {loss:.4f} acc {acc:.4f}")
        if self._progress is None or self._step_task is None:
            return
        self._progress.update(
            self._step_task, completed=step, stats=f"loss {loss:.4f} acc {acc:.4f}"
        )

    def end_epoch(self, row: Mapping[str, Any]) -> None:
        if self._progress is None or self._epoch_task is None:
            return
        prefix = "" if self._phase == "fine-tune" else f"[{self._phase}] "
        self._progress.update(
            self._epoch_task,
            completed=int(row.get("epoch", 0)),
            stats=f"loss {fmt_metric(row.get('train_loss'))} "
            f"acc {fmt_metric(row.get('train_acc'))}",
        )
        self._print(prefix + epoch_line(row, total=self._epochs))

    def end_phase(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress = None
        self._plain = None
        self._epoch_task = self._step_task = None

    def finish(self, result: FinetuneResult) -> None:
        self.end_phase()
        out = self._out or stdout()
        print_table(out, summary_table(result, table_width(out)))


class LogTrainingDisplay(TrainingDisplay):
    """Plain lines on stderr (``--quiet``): set-up, one line per epoch, warnings, the end."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._epochs = 0
        self._phase = ""

    def _write(self, line: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(visible(line) + "\n")
        stream.flush()

    def start(self, info: Mapping[str, Any]) -> None:
        for line in start_lines(info):
            self._write(line)

    def log(self, message: str) -> None:
        self._write(message)

    def warn(self, message: str) -> None:
        self._write(f"warning: {message}")

    def start_phase(self, name: str, *, epochs: int, first_epoch: int, steps: int) -> None:
        self._epochs = epochs
        self._phase = name
        if name != "fine-tune":
            self._write(f"{name}: {epochs} epochs")

    def end_epoch(self, row: Mapping[str, Any]) -> None:
        prefix = "" if self._phase == "fine-tune" else f"[{self._phase}] "
        self._write(prefix + epoch_line(row, total=self._epochs))

    def finish(self, result: FinetuneResult) -> None:
        parts = [f"done: {result.epochs_run} epochs"]
        final = result.final
        if fmt_metric(final.get("heldout_acc")) != "-":
            parts.append(f"held-out acc {fmt_metric(final.get('heldout_acc'))}")
        if result.best_val_acc is not None:
            parts.append(
                f"best val acc {fmt_metric(result.best_val_acc)} (epoch {result.best_epoch})"
            )
        parts.append(f"outputs in {result.out}")
        self._write(", ".join(parts))


def training_display(*, quiet: bool) -> TrainingDisplay:
    """The display for ``hessaudit finetune``: plain logs with ``--quiet``, else rich."""
    return LogTrainingDisplay() if quiet else RichTrainingDisplay()
