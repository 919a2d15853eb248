"""The two consoles: results go to stdout, progress and messages to stderr."""

from __future__ import annotations

from functools import lru_cache

from rich.console import Console


@lru_cache(maxsize=1)
def stdout() -> Console:
    return Console(highlight=False)


@lru_cache(maxsize=1)
def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    stderr().print(f"[yellow]warning:[/yellow] {message}", markup=True, highlight=False)


def info(message: str) -> None:
    stderr().print(message, markup=False, highlight=False)
