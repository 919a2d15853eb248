"""What happens when the reader of stdout or stderr goes away (``hessaudit ... | head -1``).

Python ignores SIGPIPE, so a write to a closed pipe raises :class:`BrokenPipeError`; rich
answers that with a silent ``exit 1``, and Python prints "Exception ignored ... BrokenPipeError"
when it flushes stdout at exit. Instead, while a command runs, ``sys.stdout`` and
``sys.stderr`` are wrapped: the first broken write points the stream's descriptor at
``/dev/null`` (as the Python documentation recommends, so that nothing fails at exit), later
writes are dropped, and the command runs to its end. Then:

* if stdout carried an output the user asked for by name (``--json -``, ``--csv -``,
  ``--summary-md -``, any ``--FLAG -``), that output is incomplete: exit 1 with one
  ``error:`` line naming the flag;
* if stdout only carried the human-readable tables, every file and gate is complete: one
  ``warning:`` line, and the exit code stays the command's (0, or 2 for a failed gate);
* a closed stderr is not reported (there is nowhere to report it); the exit code stays.

A descriptor closed before the start (``hessaudit ... >&-``) counts as a pipe closed at once.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO


class PipeGuard:
    """A text stream that stops writing, silently, once its reader has gone away."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken = False
        self.owned = False  # the stream is ours to close

    @classmethod
    def around(cls, stream: TextIO | None) -> PipeGuard:
        """A guard of ``stream``; for a closed descriptor (``>&-``: ``None``), one that is
        broken from the start and writes into /dev/null."""
        if stream is not None:
            return cls(stream)
        guard = cls(open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - closed at exit
        guard.broken = guard.owned = True
        return guard

    def _break(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)

    def write(self, text: str) -> int:
        if self.broken:
            return len(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._break()
            return len(text)

    def flush(self) -> None:
        if self.broken:
            with contextlib.suppress(OSError, ValueError):
                self._stream.flush()  # now into /dev/null: empties the buffer
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._break()
            with contextlib.suppress(OSError, ValueError):
                self._stream.flush()

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def stdout_outputs(args: Sequence[str]) -> list[str]:
    """The flags whose value is ``-`` (stdout): ``--json -``, ``--csv=-``, ``-o -``..."""
    flags = []
    for index, arg in enumerate(args):
        if arg == "--":
            break
        if arg.startswith("--") and arg.endswith("=-"):
            flags.append(arg[:-2])
        elif arg == "-" and index > 0 and args[index - 1].startswith("-"):
            flags.append(args[index - 1])
    return flags


class GuardedStreams:
    """The two guards of one command run, and the exit code their state leads to."""

    def __init__(self) -> None:
        self.stdout = PipeGuard.around(sys.stdout)
        self.stderr = PipeGuard.around(sys.stderr)

    def exit_code(self, code: int, args: Sequence[str]) -> int:
        """The command's exit code, corrected for a stdout that was closed early."""
        self.stdout.flush()
        if not self.stdout.broken:
            return code
        flags = stdout_outputs(args)
        if flags:
            if code != 1:  # exit 1 already printed its own error line
                self.stderr.write(
                    f"error: {flags[0]} -: stdout was closed before the output was complete "
                    "(broken pipe); read all of it, or write it to a file instead\n"
                )
            return 1
        self.stderr.write(
            "warning: stdout was closed before the table was complete (broken pipe); "
            "output files and gates are complete\n"
        )
        self.stderr.flush()
        return code


@contextlib.contextmanager
def guarded_streams() -> Iterator[GuardedStreams]:
    """Wrap ``sys.stdout`` / ``sys.stderr`` in :class:`PipeGuard` for the duration."""
    saved = sys.stdout, sys.stderr
    streams = GuardedStreams()
    sys.stdout, sys.stderr = streams.stdout, streams.stderr  # type: ignore[assignment]
    try:
        yield streams
    finally:
        for guard in (streams.stdout, streams.stderr):
            guard.flush()
            if guard.owned:
                guard.close()
        sys.stdout, sys.stderr = saved
