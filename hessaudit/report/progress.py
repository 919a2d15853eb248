"""A progress bar on stderr that library code drives through a plain callback."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hessaudit.report._console import stderr
from hessaudit.report._escape import plain_text


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
