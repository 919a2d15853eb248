"""Progress on stderr that library code drives through a plain callback: a rich bar on a
terminal, plain rate-limited lines in a log (see :mod:`hessaudit.report.plain_progress`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column

from hessaudit.report.console import stderr
from hessaudit.report.escape import visible
from hessaudit.report.plain_progress import PlainProgress, StepTracker, note_phase


def live_bar() -> BarColumn:
    """The bar of a live display: 10 to 40 cells, and the first column to give up width, so
    that the numbers beside it keep theirs in an 80-column terminal."""
    return BarColumn(bar_width=None, table_column=Column(min_width=10, max_width=40))


@contextlib.contextmanager
def step_progress(
    description: str, *, enabled: bool = True
) -> Iterator[Callable[[int, int, str], None]]:
    """Yield ``update(done, total, label)`` for library code to call; silent when disabled.

    On a terminal, a rich bar; otherwise plain ``progress:`` lines. An exception leaving the
    block is annotated with how far the steps got (for the out-of-memory message).
    """
    tracker = StepTracker(description)
    try:
        if not enabled:
            yield tracker.update
        elif not stderr().is_terminal:
            yield tracker.forward_to(PlainProgress(description).update).update
        else:
            with _rich_progress(description) as bar:
                yield tracker.forward_to(bar).update
    except BaseException as exc:
        note_phase(exc, tracker.phase())
        raise


@contextlib.contextmanager
def _rich_progress(description: str) -> Iterator[Callable[[int, int, str], None]]:
    columns = (
        TextColumn("[bold]{task.description}"),
        live_bar(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[label]}", markup=False),
    )
    with Progress(*columns, console=stderr(), transient=True) as progress:
        task = progress.add_task(description, total=None, label="")

        def update(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, label=visible(label))

        yield update
