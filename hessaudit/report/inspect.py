"""Rendering of ``hessaudit inspect``: one row per layer, then the tensors left unpaired."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from hessaudit.report._console import stdout
from hessaudit.report._escape import console_text, plain_text
from hessaudit.report._format import fmt_number as fmt


def print_distances(document: dict[str, Any]) -> None:
    console = stdout()
    table = Table(
        title=f"What fine-tuning changed  ({console_text(document['finetuned']['path'])})",
        title_justify="left",
        header_style="bold",
    )
    for column, justify in (
        ("layer", "left"),
        ("shape", "left"),
        ("params", "right"),
        ("‖W_ft − W_pre‖_F", "right"),
        ("relative", "right"),
    ):
        table.add_column(column, justify=justify)
    for layer in document["layers"]:
        name = Text(plain_text(layer["name"]))
        if layer["is_new_head"]:
            name.append(" (new head)", style="magenta")
        table.add_row(
            name,
            console_text("×".join(str(d) for d in layer["shape"])),
            f"{layer['numel']:,}",
            fmt(layer["dist_fro"]),
            fmt(layer["rel_dist"]),
        )
    console.print(table)
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
