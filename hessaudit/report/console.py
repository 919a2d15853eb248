"""The two consoles: results go to stdout, progress and messages to stderr."""

from __future__ import annotations

import sys
from functools import lru_cache

from rich.console import Console

from hessaudit.report.escape import console_text, visible

# Logs and CI job output are not terminals; rich would assume 80 columns there and truncate
# layer names, so give them room.
_PIPE_WIDTH = 160


@lru_cache(maxsize=1)
def stdout() -> Console:
    # emoji=False: a name such as ':warning:' is shown as typed, not as an emoji.
    return Console(
        highlight=False, emoji=False, width=None if sys.stdout.isatty() else _PIPE_WIDTH
    )


def table_width(console: Console) -> int | None:
    """The width tables are laid out for (:mod:`hessaudit.report._layout`): the console's,
    or none on the piped stdout: a CI log has no width, so its tables show every column in
    full, as wide as they need."""
    if console is stdout() and not console.is_terminal:
        return None
    return console.width


def print_table(console: Console, *renderables: object) -> None:
    """Print tables made by :func:`hessaudit.report._layout.fit_table`, uncropped (a table
    wider than the console is one that could not be narrowed without cutting a number)."""
    console.print(*renderables, crop=False)


@lru_cache(maxsize=1)
def stderr() -> Console:
    return Console(stderr=True, highlight=False, emoji=False)


def warn(message: str) -> None:
    """``warning: message`` on stderr; ``message`` is plain text (escaped, never markup)."""
    stderr().print(f"[yellow]warning:[/yellow] {console_text(message)}", markup=True,
                   highlight=False)


def info(message: str) -> None:
    stderr().print(visible(message), markup=False, highlight=False)
