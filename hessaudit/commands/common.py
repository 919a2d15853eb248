"""Shared plumbing for the CLI commands: exit codes and error handling (the options every
command shares are in :mod:`hessaudit.commands.options`)."""

from __future__ import annotations

import errno
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

import typer

from hessaudit.errors import HessauditError
from hessaudit.inputs.user_code import describe, raised_in_forward

_Classes = tuple[type[BaseException], ...]


def _exception_families() -> tuple[_Classes, _Classes]:
    """Usage-error and abort classes of typer, and of click when it is installed.

    Recent typer releases vendor their own copy of click, whose exceptions derive from
    ``typer.TyperException`` rather than click's; older ones raise click's own.
    """
    usage: list[type[BaseException]] = []
    aborts: list[type[BaseException]] = [typer.Abort, KeyboardInterrupt]
    if hasattr(typer, "TyperException"):
        usage.append(typer.TyperException)
    try:
        import click
    except ImportError:
        pass
    else:
        usage.append(click.ClickException)
        aborts.append(click.exceptions.Abort)
    return tuple(usage), tuple(aborts)


_USAGE_ERRORS, _ABORTS = _exception_families()

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_GATE_FAILED = 2
EXIT_INTERRUPTED = 130


def debug_requested(args: Sequence[str]) -> bool:
    return "--debug" in args or os.environ.get("HESSAUDIT_DEBUG", "") not in ("", "0")


def _visible(text: str) -> str:
    # Control and format characters of a file or layer name (newline, ESC, bidi overrides)
    # shown as escapes: one line, no terminal escape sequences (see hessaudit.report.escape).
    if text.isprintable():
        return text
    from hessaudit.report.escape import visible

    return visible(text)


def _print_error(message: str) -> None:
    # Plain stderr write: rich may not be importable in a broken environment, and one line
    # is all a pipeline log needs.
    sys.stderr.write(f"error: {_visible(message)}\n")
    sys.stderr.flush()


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    # One line per warning (e.g. "skipped 2 file(s): ..."), not Python's file:line + source.
    text = _visible(" ".join(str(message).split()))
    stream = file if file is not None else sys.stderr
    try:
        stream.write(f"warning: {text}\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def run_app(command: Any, args: Sequence[str], *, prog_name: str) -> int:
    """Run a click command and translate every outcome into hessaudit's exit codes.

    Click reports usage errors with exit code 2, which hessaudit reserves for failed gates;
    they are mapped to 1 here. A closed stdout or stderr (``| head``) is handled as described
    in :mod:`hessaudit.commands._pipes`; Ctrl-C always ends as 130
    (:mod:`hessaudit.commands._interrupt`).
    """
    from hessaudit.commands import _interrupt
    from hessaudit.commands._pipes import guarded_streams

    with _interrupt.sigint_recorded():
        try:
            with warnings.catch_warnings(), guarded_streams() as streams:
                if not debug_requested(args):
                    warnings.showwarning = _show_warning
                code = _run_app(command, args, prog_name=prog_name)
                if _interrupt.received() and code != EXIT_INTERRUPTED:
                    # Ctrl-C came but its exception was swallowed on the way up (a finalizer,
                    # a library's bare except): the command did not finish as the user asked.
                    sys.stderr.write("\ninterrupted\n")
                    code = EXIT_INTERRUPTED
                return streams.exit_code(code, args)
        except KeyboardInterrupt:  # a second Ctrl-C, while the first one was being handled
            return EXIT_INTERRUPTED


def _run_app(command: Any, args: Sequence[str], *, prog_name: str) -> int:
    debug = debug_requested(args)
    # torch's forward-mode AD scripts its decompositions on first use and warns about its own
    # deprecated torch.jit.script; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    # torch.load announces its check of a sparse tensor; hessaudit then refuses sparse weights.
    warnings.filterwarnings("ignore", message=r"Validating sparse tensor invariants.*")
    try:
        result = command.main(list(args), prog_name=prog_name, standalone_mode=False)
    except HessauditError as exc:
        if debug:
            traceback.print_exc()
        _print_error(str(exc))
        return EXIT_ERROR
    except _ABORTS:
        sys.stderr.write("\ninterrupted\n")
        return EXIT_INTERRUPTED
    except SystemExit as exc:
        return _stray_exit(exc, debug)
    except _USAGE_ERRORS as exc:
        # A bare ``hessaudit`` prints the help through this exception: not a failure.
        if type(exc).__name__ == "NoArgsIsHelpError":
            return EXIT_OK
        if debug:
            traceback.print_exc()
        _print_error(exc.format_message().replace("\n", " "))
        return EXIT_ERROR
    except BrokenPipeError:  # a write that bypassed the stream guards of run_app
        _print_error("an output stream was closed before the output was complete (broken pipe)")
        return EXIT_ERROR
    except MemoryError as exc:
        if debug:
            traceback.print_exc()
        _print_error(_out_of_memory(command, args, exc))
        return EXIT_ERROR
    except Exception as exc:
        if debug:
            traceback.print_exc()
        text = str(exc).strip().splitlines()
        if _is_out_of_memory(exc):
            _print_error(_out_of_memory(command, args, exc))
        elif raised_in_forward(exc) is not None:
            _print_error(
                f"--model {raised_in_forward(exc)}: the model's forward raised {describe(exc)} "
                "(rerun with --debug for the traceback)"
            )
        else:
            first = text[0] if text else ""
            _print_error(
                f"internal error: {type(exc).__name__}: {first} "
                "(rerun with --debug for the traceback, and please report it)"
            )
        return EXIT_ERROR
    if isinstance(result, int):
        return result
    return EXIT_OK


def _stray_exit(exc: SystemExit, debug: bool) -> int:
    """Exit code and line for a ``SystemExit`` that escaped a command.

    hessaudit's commands return their exit code and click reports ``--help``, ``--version``
    and usage errors without raising ``SystemExit`` (``standalone_mode=False``), so one that
    gets here was raised by other code, most likely a model's (``sys.exit``, ``argparse``):
    its code is not hessaudit's answer. Exit 1 with a line naming where it was raised, so
    that ``sys.exit(0)`` cannot pass a CI gate and ``argparse``'s 2 cannot read as "gate
    failed". The one exception is click's own exit after a broken stdout pipe (code 1).
    """
    context = exc.__context__
    if exc.code == EXIT_ERROR and isinstance(context, OSError) and context.errno == errno.EPIPE:
        return EXIT_ERROR
    if debug:
        traceback.print_exc()
    where = _raised_at(exc)
    _print_error(
        f"{describe(exc)} raised {where}ended the command before it finished, so its "
        "outputs are missing or incomplete (model code that calls sys.exit or argparse?; "
        "rerun with --debug for the traceback)"
    )
    return EXIT_ERROR


def _raised_at(exc: BaseException) -> str:
    """``at path/file.py:12 `` for the innermost frame outside the standard library."""
    import sysconfig

    stdlib = {
        os.path.realpath(p)
        for p in (sysconfig.get_paths().get("stdlib"), sysconfig.get_paths().get("platstdlib"))
        if p
    }
    where = ""
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        filename = os.path.realpath(frame.f_code.co_filename)
        if not any(filename.startswith(p + os.sep) for p in stdlib):
            where = f"at {frame.f_code.co_filename}:{lineno} "
    return where


#: Phrases of allocator failures: CUDA / MPS ("out of memory") and torch's CPU allocator
#: ("DefaultCPUAllocator: can't allocate memory ... Error code 12 (Cannot allocate memory)").
_OOM_PHRASES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def _out_of_memory(command: Any, args: Sequence[str], exc: BaseException) -> str:
    from hessaudit.commands._memory import out_of_memory_message

    return out_of_memory_message(command, args, exc)


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(p in text for p in _OOM_PHRASES)
