"""The out-of-memory message: which settings drive memory, with their values, and how far the
command got.

"try a smaller --batch-size" is wrong advice when ``--input-size 100000`` or ``--trace-probes``
is the cause, so the message lists the memory-driving options of the command that ran, those
set on the command line first, and the phase the progress display last reported::

    error: out of memory while auditing layers (3 of 21 done; last: layer1.0.conv1.weight);
    memory grows with --input-size 4000 (set here), --batch-size 32, --lanczos-steps 40, ...
    (defaults); lower them, or use a --device with more memory

(on one line). The option values come from parsing the arguments again, only once memory has
run out; the phase comes from :func:`hessaudit.report.plain_progress.note_phase`, called when
an exception leaves a progress display.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hessaudit.report.plain_progress import phase_of

#: Options whose values scale memory use (parameter names, as click knows them).
MEMORY_OPTIONS = (
    "input_size",
    "batch_size",
    "samples",
    "audit_samples",
    "lanczos_steps",
    "trace_probes",
    "spectrum_samples",
)
def memory_options(command: Any, args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(["--input-size 4000", ...], ["--batch-size 32", ...])``: the memory-driving options
    of the subcommand in ``args``, set on the command line and left at their defaults."""
    names = [arg for arg in args if not arg.startswith("-")]
    commands = getattr(command, "commands", None)
    if not names or not isinstance(commands, dict) or names[0] not in commands:
        return [], []
    sub = commands[names[0]]
    rest = list(args[list(args).index(names[0]) + 1 :])
    try:
        ctx = sub.make_context(names[0], rest, resilient_parsing=True)
    except Exception:  # the arguments parsed once already; never fail the error message
        return [], []
    given, defaults = [], []
    params = [param for param in sub.params if param.name in MEMORY_OPTIONS and param.opts]
    for param in sorted(params, key=lambda param: MEMORY_OPTIONS.index(param.name)):
        value = ctx.params.get(param.name)
        if value is None:
            continue
        text = f"{max(param.opts, key=len)} {value}"
        source = ctx.get_parameter_source(param.name)
        (given if getattr(source, "name", "") == "COMMANDLINE" else defaults).append(text)
    return given, defaults


def out_of_memory_message(command: Any, args: Sequence[str], exc: BaseException) -> str:
    """The one-line message of the module docstring."""
    phase = phase_of(exc)
    head = f"out of memory while {phase}" if phase else "out of memory"
    given, defaults = memory_options(command, args)
    if not given and not defaults:
        return f"{head}; try a smaller --batch-size or fewer --samples"
    parts = []
    if given:
        parts.append(", ".join(given) + " (set here)")
    if defaults:
        parts.append(", ".join(defaults) + " (defaults)")
    return (
        f"{head}; memory grows with {' and '.join(parts)}; lower them, or use a --device "
        "with more memory"
    )
