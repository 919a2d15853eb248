"""``hessaudit demo``: the built-in demo, with no download (see :mod:`hessaudit.demo.run`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hessaudit.commands.options import Debug, JsonOutput, Quiet


def demo_command(
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the demo's checkpoints are cached "
            "(default: $HESSAUDIT_CACHE/demo, else ~/.cache/hessaudit/demo).",
        ),
    ] = None,
    rebuild: Annotated[
        bool, typer.Option(help="Rebuild the checkpoints even when a cached copy is valid.")
    ] = False,
    json_path: JsonOutput("the audit JSON") = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> int:
    """Pretrain a small CNN on one digits task, fine-tune it on another, and audit the pair.

    Everything runs on the CPU from data that ships with scikit-learn: no download. The two
    checkpoints are cached, so a second run only repeats the audit (a few seconds).
    """
    from hessaudit import _paths
    from hessaudit.audit.run import audit_to_json
    from hessaudit.demo.run import default_cache_dir, run_demo

    cache = cache_dir.expanduser() if cache_dir is not None else default_cache_dir()
    outputs = _paths.check_outputs({"--json": json_path}, folders={"the demo cache": cache})
    to_stdout = outputs.to_stdout
    from hessaudit.report.audit import print_audit
    from hessaudit.report.console import info
    from hessaudit.report.progress import step_progress

    log = None if quiet else info
    with (
        step_progress("auditing layers", enabled=not quiet) as advance,
        _paths.stdout_reserved(to_stdout),
    ):
        result = run_demo(cache_dir, rebuild=rebuild, log=log, progress=advance)
    if json_path is not None:
        _paths.write_output("--json", json_path, audit_to_json(result.audit))
    if not quiet and not to_stdout:
        print_audit(result.audit.to_dict())
        checkpoints = result.checkpoints
        typer.echo(
            f"demo checkpoints: {checkpoints.pretrained} and {checkpoints.finetuned} "
            f"({'cached' if checkpoints.cached else 'built now'}). Audit them yourself with:\n"
            f"  hessaudit measure {checkpoints.pretrained} {checkpoints.finetuned} "
            "--model hessaudit.zoo:digits_cnn --data digits --eval-data digits",
            err=True,
        )
    return 0
