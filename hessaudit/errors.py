"""The one exception type users see: a clear, one-line reason, never a traceback."""

from __future__ import annotations


class HessauditError(Exception):
    """A failure the user can fix: bad input, a missing file, an impossible option.

    The CLI prints ``error: <message>`` on one line and exits with code 1. The message names
    the file or flag at fault, what is wrong, and (in ``hint``) what to do about it.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
