"""The two consoles: results go to stdout, progress and messages to stderr."""

from __future__ import annotations

import sys
from functools import lru_cache

from rich.console import Console

# Logs and CI job output are not terminals; rich would assume 80 columns there and truncate
# layer names, so give them room.
_PIPE_WIDTH = 160


@lru_cache(maxsize=1)
def stdout() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else _PIPE_WIDTH)


@lru_cache(maxsize=1)
def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    stderr().print(f"[yellow]warning:[/yellow] {message}", markup=True, highlight=False)


def info(message: str) -> None:
    stderr().print(message, markup=False, highlight=False)
