"""``hessaudit report``: one self-contained HTML page for an audit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hessaudit.commands.options import Debug, Quiet


def report_command(
    audit: Annotated[Path, typer.Argument(help="An audit JSON file (hessaudit measure --json).")],
    out: Annotated[
        str,
        typer.Option(
            "--out", "-o", help="Write the HTML page here (e.g. report.html; '-' for stdout)."
        ),
    ],
    title: Annotated[str | None, typer.Option(help="Page title (default: from the audit).")] = None,
    plots: Annotated[
        bool,
        typer.Option(help="Draw the per-layer plot with matplotlib (off: HTML/CSS bars only)."),
    ] = True,
    quiet: Quiet = False,
    debug: Debug = False,
) -> int:
    """Write a self-contained HTML report (summary, gates, per-layer bars) for an audit.

    The page has inline CSS and the plot embedded as a PNG: no scripts, no external URLs.
    The exit code does not depend on the audit's gates: 0 once the page is written.
    """
    from hessaudit import _paths
    from hessaudit.audit.compare import load_audit

    outputs = _paths.check_outputs({"--out": out}, {"the audit": audit})
    document = load_audit(audit)
    from hessaudit.report.html import audit_html

    page, plotted = audit_html(document, title=title, plots=plots)
    _paths.write_output("--out", out, page)
    if not quiet:
        from hessaudit.report.console import info, warn

        if plots and not plotted and document["layers"]:
            warn("matplotlib is not installed: the page shows HTML bars instead of plots")
        info(f"wrote {'the page to stdout' if outputs.to_stdout else out}")
    return 0
