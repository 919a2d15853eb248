"""How the help pages read: flags shown as flags, descriptions as whole sentences.

Two habits of typer's rich help (typer 0.29) that every command shares, fixed here once for
every command and option, present and future (``cli.py`` builds the app with these classes):

* Typer labels every option with its value type, flags included: ``--spectrum/--no-spectrum
  <bool>``. A flag takes no value, so :func:`plain_flags` gives flags an empty metavar, which
  is what the help shows in place of the type.
* With ``rich_markup_mode="rich"`` typer keeps a docstring's single line breaks in the command
  list of ``hessaudit --help`` and in the later paragraphs of a command's page, so that a
  description wrapped at 100 columns in the source breaks in mid-sentence on the screen.
  :func:`join_lines` keeps paragraphs (blank lines) and ``\\b`` blocks and joins the rest.
"""

from __future__ import annotations

import inspect
from typing import Any

import typer.core


def join_lines(text: str | None) -> str | None:
    """``text`` with the single line breaks inside each paragraph replaced by spaces."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        p if p.startswith("\b") else " ".join(line.strip() for line in p.splitlines())
        for p in paragraphs
    )


def plain_flags(params: list[Any]) -> list[Any]:
    """``params`` with every on/off flag given an empty metavar (no ``<bool>`` beside it)."""
    for param in params:
        flag = getattr(param, "is_flag", False) and not getattr(param, "count", False)
        if flag and param.metavar is None:
            param.metavar = ""
    return params


class Command(typer.core.TyperCommand):
    """A command whose help shows flags as flags and descriptions as whole sentences."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = join_lines(self.help)
        self.epilog = join_lines(self.epilog)

    def get_params(self, ctx: Any) -> list[Any]:
        return plain_flags(super().get_params(ctx))


class Group(typer.core.TyperGroup):
    """The ``hessaudit`` group, with the same help conventions as :class:`Command`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = join_lines(self.help)

    def get_params(self, ctx: Any) -> list[Any]:
        return plain_flags(super().get_params(ctx))
