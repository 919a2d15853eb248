"""Progress on stderr that library code drives through a plain callback: a rich bar on a
terminal, plain rate-limited lines in a log (see :mod:`hessaudit.report._plain_progress`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hessaudit.report._console import stderr
from hessaudit.report._escape import plain_text
from hessaudit.report._plain_progress import PlainProgress, StepTracker, note_phase


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
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[label]}", markup=False),
    )
    with Progress(*columns, console=stderr(), transient=True) as progress:
        task = progress.add_task(description, total=None, label="")

        def update(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, label=plain_text(label))

        yield update
