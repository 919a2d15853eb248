"""``hessaudit compare``: what changed between two audits, with gates on the increase."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hessaudit.commands.options import Debug, JsonOutput, Quiet, SummaryMd

_GATES = "Gates"
_OUTPUT = "Outputs"


def compare_command(
    base: Annotated[Path, typer.Argument(help="The accepted audit (hessaudit.audit/1 JSON).")],
    new: Annotated[Path, typer.Argument(help="The audit to check against it.")],
    max_increase: Annotated[
        float | None,
        typer.Option(
            help="Fail (exit 2) when the bound grew by more than PCT percent (default: no "
            "limit).",
            metavar="PCT",
            rich_help_panel=_GATES,
        ),
    ] = None,
    max_layer_increase: Annotated[
        list[str] | None,
        typer.Option(
            help=(
                "Fail when a layer's Hcal grew by more than PCT percent; 'PATTERN=PCT' limits "
                "it to layers matching the glob (repeatable; default: no limit)."
            ),
            metavar="[PATTERN=]PCT",
            rich_help_panel=_GATES,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Read \\[compare] gates from this TOML file (default: ./pyproject.toml's "
            "\\[tool.hessaudit.compare], when there is one).",
            rich_help_panel=_GATES,
        ),
    ] = None,
    json_path: JsonOutput("the hessaudit.compare/1 JSON", _OUTPUT) = None,
    summary_md: SummaryMd(_OUTPUT) = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> int:
    """Compare two audits: per-layer Hcal and bound changes, with gates on the increase."""
    from hessaudit import _paths
    from hessaudit.audit import gates
    from hessaudit.audit.compare import compare_audits, compare_to_json, load_audit

    outputs = _paths.check_outputs(
        {"--json": json_path, "--summary-md": summary_md},
        {
            "the base audit": base,
            "the new audit": new,
            "the gates config": config if config is not None else "pyproject.toml",
        },
    )
    specs = gates.compare_gates(
        max_increase=max_increase, max_layer_increase=max_layer_increase, config=config
    )
    base_doc, new_doc = load_audit(base), load_audit(new)
    document = compare_audits(base_doc, new_doc, specs, base_path=str(base), new_path=str(new))
    from hessaudit.report.compare import print_compare, print_warnings

    print_warnings(document["warnings"])
    if json_path is not None:
        _paths.write_output("--json", json_path, compare_to_json(document))
    if summary_md is not None:
        from hessaudit.report.markdown import compare_markdown, write_summary

        write_summary(summary_md, compare_markdown(document))
    if not quiet and not outputs.to_stdout:
        print_compare(document)
    return 0 if document["success"] else 2
