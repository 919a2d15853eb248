"""Shared plumbing for the CLI commands: exit codes, error handling, common options."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from hessaudit.errors import HessauditError

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

# Options every command accepts. ``--debug`` is read by ``run_app`` from the raw arguments, so
# that a failure while parsing the other options can still show its traceback.
DebugOption = Annotated[
    bool, typer.Option("--debug", help="Show the full Python traceback on errors.")
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No tables or progress bars; logs and errors only.")
]


def debug_requested(args: Sequence[str]) -> bool:
    return "--debug" in args or os.environ.get("HESSAUDIT_DEBUG", "") not in ("", "0")


def _print_error(message: str) -> None:
    # Plain stderr write: rich may not be importable in a broken environment, and one line
    # is all a pipeline log needs.
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    # One line per warning (e.g. "skipped 2 file(s): ..."), not Python's file:line + source.
    text = " ".join(str(message).split())
    stream = file if file is not None else sys.stderr
    try:
        stream.write(f"warning: {text}\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def run_app(command: Any, args: Sequence[str], *, prog_name: str) -> int:
    """Run a click command and translate every outcome into hessaudit's exit codes.

    Click reports usage errors with exit code 2, which hessaudit reserves for failed gates;
    they are mapped to 1 here.
    """
    with warnings.catch_warnings():
        if not debug_requested(args):
            warnings.showwarning = _show_warning
        return _run_app(command, args, prog_name=prog_name)


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
    except _USAGE_ERRORS as exc:
        # A bare ``hessaudit`` prints the help through this exception: not a failure.
        if type(exc).__name__ == "NoArgsIsHelpError":
            return EXIT_OK
        if debug:
            traceback.print_exc()
        _print_error(exc.format_message().replace("\n", " "))
        return EXIT_ERROR
    except MemoryError:
        if debug:
            traceback.print_exc()
        _print_error("out of memory; try a smaller --batch-size or fewer --samples")
        return EXIT_ERROR
    except Exception as exc:
        if debug:
            traceback.print_exc()
        text = str(exc).strip().splitlines()
        if _is_out_of_memory(exc):
            _print_error("out of memory; try a smaller --batch-size or fewer --samples")
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


#: Phrases of allocator failures: CUDA / MPS ("out of memory") and torch's CPU allocator
#: ("DefaultCPUAllocator: can't allocate memory ... Error code 12 (Cannot allocate memory)").
_OOM_PHRASES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(p in text for p in _OOM_PHRASES)
