"""The text-data flags (``--text-column``, ``--label-column``, ``--tokenizer``, ``--max-length``),
checked in one place, and which ``--data`` sources are text.

Text data is a table file: ``.csv``, ``.tsv``, ``.jsonl`` or ``.parquet`` (the suffix decides,
case-insensitively; :mod:`hessaudit.inputs.text_table` reads it). Columns:

* ``--text-column NAME``: the text; ``--text-column A,B``: a sentence pair (A, B), as in GLUE's
  MRPC or QNLI. Not given: ``text`` when the file has it, else the pair ``sentence1,sentence2``
  when it has both.
* ``--label-column NAME`` (default ``label``): integer class indices, or class names mapped
  through the model config's ``label2id``.

``--tokenizer DIR`` (default: the model's directory) is a local folder, never a hub id;
``--max-length N`` (default 128) truncates every example (pair: longest first) to N tokens,
special tokens included. This module imports neither torch nor pandas.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from hessaudit.errors import HessauditError

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "MAX_MAX_LENGTH",
    "PAIR_COLUMNS",
    "TEXT_EXTENSIONS",
    "TextOptions",
    "is_text_file",
]

#: Suffixes read as text tables.
TEXT_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".parquet")
DEFAULT_MAX_LENGTH = 128
#: Largest ``--max-length``: far above any encoder's positions (BERT: 512); the data is held
#: as (examples, 3, length) int64, so the bound also bounds memory per example.
MAX_MAX_LENGTH = 65_536
#: The sentence-pair columns used when ``--text-column`` is not given and there is no ``text``.
PAIR_COLUMNS = ("sentence1", "sentence2")
_DEFAULT_TEXT = "text"
_MAX_NAME = 200


def _check_name(flag: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise HessauditError(f"{flag} is empty", hint="give the name of a column of the data")
    if len(name) > _MAX_NAME:
        raise HessauditError(f"{flag}: a column name of {len(name)} characters is too long")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise HessauditError(f"{flag} {name!r}: column names cannot hold control characters")
    return name


@dataclass(frozen=True)
class TextOptions:
    """The text flags of ``measure`` (and ``finetune``); construction checks every value.

    ``text_column`` None means "text, else sentence1,sentence2" (see the module docstring).
    """

    text_column: str | None = None
    label_column: str = "label"
    tokenizer: str | None = None
    max_length: int = DEFAULT_MAX_LENGTH

    def __post_init__(self) -> None:
        if self.text_column is not None:
            parts = self.text_column.split(",") if isinstance(self.text_column, str) else [None]
            if len(parts) > 2:
                raise HessauditError(
                    f"--text-column {self.text_column!r}: give one column, or two separated by "
                    "a comma for a sentence pair"
                )
            for part in parts:
                _check_name("--text-column", part)
        _check_name("--label-column", self.label_column)
        if self.label_column in self.named_text_columns:
            raise HessauditError(
                f"--label-column {self.label_column!r} is also a --text-column",
                hint="the labels and the text are different columns",
            )
        if self.tokenizer is not None and (
            not isinstance(self.tokenizer, str | os.PathLike) or not str(self.tokenizer).strip()
        ):
            raise HessauditError("--tokenizer is empty", hint="give a local tokenizer folder")
        length = self.max_length
        if isinstance(length, bool) or not isinstance(length, int) or not (
            1 <= length <= MAX_MAX_LENGTH
        ):
            raise HessauditError(
                f"--max-length {length}: must be an integer between 1 and {MAX_MAX_LENGTH}",
                hint=f"it counts tokens per example, special tokens included; the default is "
                f"{DEFAULT_MAX_LENGTH}",
            )

    @property
    def named_text_columns(self) -> tuple[str, ...]:
        """The text column(s) the user named (empty when ``--text-column`` was not given)."""
        return () if self.text_column is None else tuple(self.text_column.split(","))

    def text_columns(self, available: list[str]) -> tuple[str, ...]:
        """The column(s) to read among ``available``: the named ones, else ``text``, else the
        pair ``sentence1, sentence2``. Missing columns are the caller's error to report."""
        if self.text_column is not None:
            return self.named_text_columns
        if _DEFAULT_TEXT in available or not all(c in available for c in PAIR_COLUMNS):
            return (_DEFAULT_TEXT,)
        return PAIR_COLUMNS

    def is_default(self) -> bool:
        return self == TextOptions()

    def given_flags(self) -> list[str]:
        """The flags set to something other than their defaults, e.g. ``["--max-length"]``."""
        default = TextOptions()
        return [
            "--" + f.name.replace("_", "-")
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        ]

    def to_dict(self) -> dict[str, object]:
        return {
            "text_column": self.text_column,
            "label_column": self.label_column,
            "tokenizer": None if self.tokenizer is None else str(self.tokenizer),
            "max_length": self.max_length,
        }


def is_text_file(source: str | os.PathLike[str] | None) -> bool:
    """Whether ``source`` names a text table by its suffix (it need not exist)."""
    if source is None:
        return False
    return Path(str(source)).suffix.lower() in TEXT_EXTENSIONS
