"""Rendering of ``hessaudit inspect``: one row per layer, then the tensors left unpaired."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from hessaudit.report._format import fmt_number as fmt
from hessaudit.report._layout import Column, fit_table
from hessaudit.report.console import print_table, stdout, table_width
from hessaudit.report.escape import console_text, visible


def distances_table(document: dict[str, Any], width: int | None = None) -> Table:
    """One row per layer, laid out for ``width`` cells (``None``: as wide as it needs)."""
    layers = document["layers"]
    columns = [
        Column("layer", "layer", [visible(la["name"]) for la in layers], "left", "name",
               shrink=30,
               suffixes=[Text("(new head)", style="magenta") if la["is_new_head"] else None
                         for la in layers]),
        Column("shape", "shape", [visible("×".join(str(d) for d in la["shape"]))
                                  for la in layers], "left", drop=20),
        Column("params", "params", [f"{la['numel']:,}" for la in layers], drop=40),
        Column("dist", "‖W_ft − W_pre‖_F", [fmt(la["dist_fro"]) for la in layers]),
        Column("rel", "relative", [fmt(la["rel_dist"]) for la in layers]),
    ]
    table, _ = fit_table(
        columns, width,
        title=f"What fine-tuning changed  ({console_text(document['finetuned']['path'])})",
    )
    return table


def print_distances(document: dict[str, Any], console: Console | None = None) -> None:
    console = console or stdout()
    print_table(console, distances_table(document, table_width(console)))
    if any(layer["is_new_head"] for layer in document["layers"]):
        console.print("[magenta]new head[/magenta]: no pretrained counterpart; distance from zero.")
    for key, label in (
        ("only_in_pretrained", "only in the pretrained checkpoint"),
        ("only_in_finetuned", "only in the fine-tuned checkpoint"),
    ):
        names = document[key]
        if names:
            console.print(
                f"[bold]{len(names)} tensor(s) {label}:[/bold] "
                + ", ".join(console_text(name) for name in names)
            )
    for mismatch in document["shape_mismatches"]:
        console.print(
            f"[yellow]shape mismatch[/yellow] {console_text(mismatch['name'])}: "
            + console_text(f"{tuple(mismatch['pretrained'])} -> {tuple(mismatch['finetuned'])}")
        )
