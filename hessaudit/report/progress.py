"""A progress bar on stderr that library code drives through a plain callback."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column

from hessaudit.report._console import stderr
from hessaudit.report._escape import plain_text


def live_bar() -> BarColumn:
    """The bar of a live display: 10 to 40 cells, and the first column to give up width, so
    that the numbers beside it keep theirs in an 80-column terminal."""
    return BarColumn(bar_width=None, table_column=Column(min_width=10, max_width=40))


@contextlib.contextmanager
def step_progress(
    description: str, *, enabled: bool = True
) -> Iterator[Callable[[int, int, str], None]]:
    """Yield ``update(done, total, label)`` for library code to call; silent when disabled."""
    if not enabled:
        yield lambda done, total, label: None
        return
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
            progress.update(task, completed=done, total=total, label=plain_text(label))

        yield update
