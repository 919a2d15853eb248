"""``hessaudit correlate``: which measure tracks the generalization gap over many audits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hessaudit.commands.options import Debug, JsonOutput, Quiet

_OUTPUT = "Output"
_GATE = "Gate calibration"


def correlate_command(
    audits: Annotated[
        list[Path],
        typer.Argument(help="Audit JSONs (hessaudit measure --json), or folders of them."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write correlations.csv, one PNG per measure and correlations.html "
            "into this folder (created if missing; default: not written).",
            rich_help_panel=_OUTPUT,
        ),
    ] = None,
    json_path: JsonOutput("the hessaudit.correlate/1 JSON", _OUTPUT) = None,
    group_by: Annotated[
        str | None,
        typer.Option(
            help="Also correlate within groups: a --label KEY given to measure, or a field "
            "of inputs (dotted path, e.g. data or pretrained.sha256; default: none).",
            metavar="KEY",
        ),
    ] = None,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples for the 95% intervals (0: none).")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    suggest_gate: Annotated[
        bool,
        typer.Option(
            help="Print --max-hessian-term and --max-bound thresholds from the --accepted "
            "audits, as TOML for \\[tool.hessaudit.gates].", rich_help_panel=_GATE,
        ),
    ] = False,
    accepted: Annotated[
        list[str] | None,
        typer.Option(
            help="Accepted audits for --suggest-gate: files, folders or glob patterns "
            "(repeatable; default: none).", metavar="FILE|GLOB", rich_help_panel=_GATE,
        ),
    ] = None,
    margin: Annotated[
        float,
        typer.Option(help="Threshold = largest accepted value x MARGIN.", rich_help_panel=_GATE),
    ] = 1.1,
    plots: Annotated[
        bool, typer.Option(help="Draw the PNG plots with matplotlib (with --out).")
    ] = True,
    quiet: Quiet = False,
    debug: Debug = False,
) -> int:
    """Spearman and Pearson correlation of each measure (and the bound) with the observed gap
    over many audits, with bootstrap intervals; optionally thresholds for CI gates."""
    import sys

    from hessaudit._paths import check_output_paths
    from hessaudit.correlate import core as lib
    from hessaudit.correlate.paths import (
        check_not_inputs,
        check_out_dir,
        expand_accepted,
        make_out_dir,
    )
    from hessaudit.correlate.read import expand_inputs, plain, read_audit
    from hessaudit.errors import HessauditError

    check_output_paths(json_path)
    lib.check_bootstrap(bootstrap, seed)
    if group_by is not None:
        lib.check_group_key(group_by)
    if suggest_gate != bool(accepted):
        raise HessauditError(
            "--suggest-gate needs --accepted FILE|GLOB (the audits you accept)"
            if suggest_gate else "--accepted is used only with --suggest-gate"
        )
    lib.check_margin(margin)
    named, found = expand_inputs(audits)
    accepted_paths = expand_accepted(accepted or [])
    check_not_inputs(out, json_path, [*named, *found, *accepted_paths])
    if out is not None:
        check_out_dir(out)
    points, skipped = lib.load_points(named, found)
    for entry in skipped:
        sys.stderr.write(f"warning: skipped {plain(entry['path'], 200)}: {entry['reason']}\n")
    document = lib.correlate_audits(
        points, skipped=skipped, group_by=group_by, bootstrap=bootstrap, seed=seed
    )
    if suggest_gate:
        documents = [read_audit(path) for path in accepted_paths]
        document["suggested_gates"] = lib.suggest_gates(documents, margin=margin)
    for line in document["warnings"]:
        sys.stderr.write(f"warning: {line}\n")
    sys.stderr.flush()
    from hessaudit.report import correlate as report

    if json_path == "-":
        typer.echo(lib.to_json(document), nl=False)
    elif json_path is not None:
        from hessaudit._atomic import write_text

        write_text(json_path, lib.to_json(document))
    if out is not None:
        make_out_dir(out)
        report.write_outputs(document, out, plots=plots)
    if json_path != "-":
        if not quiet:
            report.print_correlate(document)
        elif document["suggested_gates"]:
            typer.echo(document["suggested_gates"]["toml"], nl=False)
    return 0
