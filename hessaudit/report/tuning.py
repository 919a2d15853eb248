"""What ``hessaudit tune`` shows: a rich progress bar over the trials with one line per finished
trial and a table of the best ones, or plain log lines with ``--quiet``."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TextIO

from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hessaudit.report._format import fmt_metric
from hessaudit.report._layout import Column, fit_table, merge_identical
from hessaudit.report.console import print_table, stderr, stdout, table_width
from hessaudit.report.escape import console_text, visible
from hessaudit.report.progress import live_bar
from hessaudit.robust.tune.results import TrialRecord, TuneDisplay, TuneResult

__all__ = ["LogTuneDisplay", "RichTuneDisplay", "trial_line", "tune_display"]


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={fmt_metric(v)}" for k, v in params.items())


def trial_line(record: TrialRecord, best: TrialRecord | None) -> str:
    """One finished trial as a plain line."""
    m = record.metrics
    parts = [f"trial {record.number} {record.state}"]
    if record.score is not None:
        parts.append(f"score {fmt_metric(record.score)}")
    parts.append(
        f"noisy val acc {fmt_metric(m.get('val_acc'))}, corrected val loss "
        f"{fmt_metric(m.get('val_loss_corrected'))}"
        + (f", bound {fmt_metric(m.get('bound'))}" if m.get("bound") is not None else "")
        + f", epochs {fmt_metric(m.get('epochs_run'))}"
    )
    parts.append(_params(record.params))
    if record.seconds is not None:
        parts.append(f"{record.seconds:.1f}s")
    if record.error:
        parts.append(f"error: {record.error}")
    if best is not None and best.number == record.number:
        parts.append("(best so far)")
    return " | ".join(parts)


def _start_line(info: Mapping[str, Any]) -> str:
    return (
        f"tuning {', '.join(info['space'])} by {info['objective']} ({info['direction']}) on "
        f"{info['val_size']} noisy validation examples ({info['train_size']} for training): "
        f"{info['trials']} trials of {info['trial_epochs']} epochs"
        + (f", {info['done']} done before" if info.get("done") else "")
        + f", then {info['final_epochs']} epochs for the best; seed {info['seed']}; "
        f"storage {info['storage']}"
    )


def best_table(result: TuneResult, width: int | None = None, top: int = 5) -> Table:
    """The ``top`` best trials, laid out for ``width`` cells (``None``: as wide as it needs);
    a narrow width leaves out seconds, epochs, the accuracy, then the last parameters."""
    names = list(result.settings.space)
    complete = [r for r in result.trials if r.state == "complete" and r.score is not None]
    sign = -1.0 if result.document.get("direction") == "maximize" else 1.0
    complete.sort(key=lambda r: (sign * r.score, r.number))
    best = complete[:top]
    columns = [
        Column("trial", "trial", [str(r.number) for r in best]),
        Column("score", "score", [fmt_metric(r.score) for r in best]),
        *[Column(f"param:{n}", visible(n), [visible(fmt_metric(r.params.get(n))) for r in best],
                 drop=200 - i) for i, n in enumerate(names)],
        Column("acc", "noisy val acc", [fmt_metric(r.metrics.get("val_acc")) for r in best],
               drop=30),
        Column("epochs", "epochs", [fmt_metric(r.metrics.get("epochs_run")) for r in best],
               drop=20),
        Column("seconds", "seconds", [fmt_metric(r.seconds) for r in best], drop=10),
    ]
    table, _ = fit_table(
        merge_identical(columns, ("score", "acc")), width,
        title=f"hessaudit tune: best trials by {console_text(result.settings.objective)}",
    )
    return table


def _summary(result: TuneResult) -> list[str]:
    counts = result.document.get("trials", {})
    lines = [
        "trials: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        + f"; {result.seconds:.0f} s in all",
    ]
    if result.best is not None:
        lines.append(f"best: trial {result.best.number}, {_params(result.best.params)}")
    final = result.document.get("final")
    if final:
        lines.append(
            f"final model in {final['out']}: held-out acc {fmt_metric(final.get('heldout_acc'))}"
        )
    lines.append(f"reproduce: {result.document.get('command')}")
    return lines


class RichTuneDisplay(TuneDisplay):
    """A progress bar over the trials (and the epochs of the running one) on stderr, a line
    per finished trial, the best trials as a table on stdout."""

    def __init__(self, console: Console | None = None, out: Console | None = None) -> None:
        self._console = console  # progress and logs (default: stderr)
        self._out = out  # the table of the best trials (default: stdout)
        self._progress: Progress | None = None
        self._trials = None
        self._epochs = None

    def start(self, info: Mapping[str, Any]) -> None:
        self._err().print(visible(_start_line(info)), markup=False, highlight=False)
        self._progress = Progress(
            TextColumn("{task.description}"),
            live_bar(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=self._err(),
            transient=True,
        )
        self._progress.start()
        self._trials = self._progress.add_task(
            "trials", total=info["trials"], completed=info.get("done", 0), note=""
        )
        self._epochs = self._progress.add_task(
            "epochs", total=info["trial_epochs"], note="", visible=False
        )

    def _err(self) -> Console:
        return self._console or stderr()

    def _print(self, message: str, style: str | None = None) -> None:
        console = self._progress.console if self._progress is not None else self._err()
        console.print(visible(message), style=style, markup=False, highlight=False)

    def log(self, message: str) -> None:
        self._print(message)

    def warn(self, message: str) -> None:
        self._print(f"warning: {message}", style="yellow")

    def start_trial(self, number: int, params: Mapping[str, Any]) -> None:
        if self._progress is not None:
            self._progress.reset(self._epochs, visible=True, note=f"trial {number}")

    def trial_epoch(self, number: int, epoch: int, epochs: int, metrics: Mapping[str, Any]
                    ) -> None:
        if self._progress is not None:
            self._progress.update(
                self._epochs, completed=epoch,
                note=f"trial {number}: noisy val acc {fmt_metric(metrics.get('val_acc'))}",
            )

    def end_trial(self, record: TrialRecord, best: TrialRecord | None) -> None:
        style = {"complete": None, "pruned": "dim", "fail": "red"}.get(record.state)
        self._print(trial_line(record, best), style=style)
        if self._progress is not None:
            self._progress.advance(self._trials)
            self._progress.update(
                self._trials,
                note="" if best is None else f"best {fmt_metric(best.score)} (trial {best.number})",
            )

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def final_display(self) -> Any:
        self._stop()
        from hessaudit.report.training import training_display

        return training_display(quiet=False)

    def finish(self, result: TuneResult) -> None:
        self._stop()
        out = self._out or stdout()
        print_table(out, best_table(result, table_width(out)))
        for line in _summary(result):
            out.print(visible(line), markup=False, highlight=False)


class LogTuneDisplay(TuneDisplay):
    """Plain lines on stderr, no bars, no table."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def _write(self, line: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(visible(line) + "\n")
        stream.flush()

    def start(self, info: Mapping[str, Any]) -> None:
        self._write(_start_line(info))

    def log(self, message: str) -> None:
        self._write(message)

    def warn(self, message: str) -> None:
        self._write(f"warning: {message}")

    def end_trial(self, record: TrialRecord, best: TrialRecord | None) -> None:
        self._write(trial_line(record, best))

    def final_display(self) -> Any:
        from hessaudit.report.training import training_display

        return training_display(quiet=True)

    def finish(self, result: TuneResult) -> None:
        for line in _summary(result):
            self._write(line)


def tune_display(*, quiet: bool) -> TuneDisplay:
    return LogTuneDisplay() if quiet else RichTuneDisplay()
