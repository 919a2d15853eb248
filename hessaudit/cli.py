"""The ``hessaudit`` command line: a thin Typer layer over the library.

Each command lives in ``hessaudit/commands/<name>.py`` and only parses options, calls library
functions and hands results to ``hessaudit.report``. Nothing heavy (torch, timm) is imported
here, so ``hessaudit --help`` and ``hessaudit --version`` answer instantly.

Exit codes (the same for every command and every output format):

* 0: the job ran, and every gate passed (or none was given);
* 1: the tool could not do its job (bad input, missing file, crash); one line on stderr;
* 2: the job ran and a gate failed;
* 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Annotated

import typer

from hessaudit._version import __version__
from hessaudit.commands import common, help_pages
from hessaudit.commands.compare import compare_command
from hessaudit.commands.correlate import correlate_command
from hessaudit.commands.demo import demo_command
from hessaudit.commands.finetune import finetune_command
from hessaudit.commands.inspect import inspect_command
from hessaudit.commands.measure import measure_command
from hessaudit.commands.report import report_command
from hessaudit.commands.tune import tune_command

EXIT_CODES_HELP = (
    "Exit codes: 0 = success (all gates passed), 1 = error (bad input, crash), "
    "2 = a gate failed, 130 = interrupted."
)

app = typer.Typer(
    name="hessaudit",
    help=(
        "Audit fine-tuned networks with Hessian-based generalization bounds "
        "(Ju, Li & Zhang, ICML 2022), and fine-tune robustly under label noise.\n\n"
        + EXIT_CODES_HELP
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    cls=help_pages.Group,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"hessaudit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Audit fine-tuned networks with Hessian-based generalization bounds."""


app.command("inspect", epilog=EXIT_CODES_HELP, cls=help_pages.Command)(inspect_command)
app.command("measure", epilog=EXIT_CODES_HELP, cls=help_pages.Command)(measure_command)
app.command("compare", epilog=EXIT_CODES_HELP, cls=help_pages.Command)(compare_command)
app.command("report", epilog=EXIT_CODES_HELP, cls=help_pages.Command)(report_command)
app.command("correlate", epilog=EXIT_CODES_HELP, cls=help_pages.Command)(correlate_command)
app.command("finetune", epilog=EXIT_CODES_HELP, cls=help_pages.Command)(finetune_command)
app.command("tune", epilog=EXIT_CODES_HELP, cls=help_pages.Command)(tune_command)
app.command("demo", epilog=EXIT_CODES_HELP, cls=help_pages.Command)(demo_command)


#: Caches that libraries write outside the paths the user named: matplotlib's font list
#: (~/.cache/matplotlib, ~/.config/matplotlib; ``report``) and torch's inductor folder
#: ($TMPDIR/torchinductor_$USER, created when timm imports torch._dynamo).
PRIVATE_CACHE_VARIABLES = ("MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR")


@contextlib.contextmanager
def private_caches() -> Iterator[None]:
    """Point the caches of :data:`PRIVATE_CACHE_VARIABLES` at a temporary folder, removed at
    the end; a variable the user set is left alone. (``report`` then builds matplotlib's font
    list each time, about half a second.)"""
    unset = [name for name in PRIVATE_CACHE_VARIABLES if not os.environ.get(name)]
    try:
        folder = tempfile.mkdtemp(prefix="hessaudit-") if unset else None
    except OSError:  # no writable temporary folder: the libraries' defaults then apply
        folder = None
    if folder is None:
        yield
        return
    for name in unset:
        os.environ[name] = os.path.join(folder, name.lower())
    try:
        yield
    finally:
        for name in unset:
            os.environ.pop(name, None)
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and map every outcome to an exit code."""
    args = sys.argv[1:] if argv is None else argv
    with private_caches():
        code = common.run_app(typer.main.get_command(app), args, prog_name="hessaudit")
    sys.exit(code)
