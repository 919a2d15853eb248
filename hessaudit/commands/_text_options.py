"""The text-data options that ``measure`` (and later ``finetune``) share.

Each function returns the ``typer.Option`` for a command's help panel, so the help text is
written once; the values are checked in one place, :class:`hessaudit.inputs.text_options.
TextOptions`.
"""

from __future__ import annotations

from typing import Any

import typer


def text_column_option(panel: str) -> Any:
    return typer.Option(
        help="Text data: the text column, or two columns A,B for a sentence pair (default: "
        "text, or the pair sentence1,sentence2 when there is no text column).",
        metavar="NAME[,NAME]",
        rich_help_panel=panel,
    )


def label_column_option(panel: str) -> Any:
    return typer.Option(
        help="Text data: the label column, integers or names from the model's label2id.",
        metavar="NAME",
        rich_help_panel=panel,
    )


def tokenizer_option(panel: str) -> Any:
    return typer.Option(
        help="Text data: a local tokenizer folder (default: the model's folder).",
        metavar="DIR",
        rich_help_panel=panel,
    )


def max_length_option(panel: str) -> Any:
    return typer.Option(
        help="Text data: truncate examples to N tokens, special tokens included.",
        metavar="N",
        rich_help_panel=panel,
    )
