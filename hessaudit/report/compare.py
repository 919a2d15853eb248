"""Rendering of a ``hessaudit.compare/1`` document: summary changes, per-layer changes, gates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table
from rich.text import Text

from hessaudit.compare import SUMMARY_LABELS
from hessaudit.measures import MEASURE_LABELS
from hessaudit.report._console import stdout, warn
from hessaudit.report._escape import console_text, plain_text
from hessaudit.report._format import fmt_number as fmt
from hessaudit.report._format import fmt_pair, fmt_percent, fmt_signed


def _pct(value: float | None, *, worse_if_up: bool = True) -> Text:
    if value is None:
        return Text("-", style="dim")
    style = ""
    if abs(value) >= 0.05:
        style = "red" if (value > 0) == worse_if_up else "green"
    return Text(fmt_percent(value), style=style)


def _signed(value: float | None) -> str:
    return fmt_signed(value)


def summary_table(document: Mapping[str, Any]) -> Table:
    table = Table(title="Summary (base → new)", title_justify="left", header_style="bold")
    table.add_column("quantity")
    for column in ("base", "new", "change", "change %"):
        table.add_column(column, justify="right")
    for key, label in SUMMARY_LABELS.items():
        entry = document["summary"].get(key)
        if entry is None or (entry["base"] is None and entry["new"] is None):
            continue
        table.add_row(
            label,
            fmt(entry["base"]),
            fmt(entry["new"]),
            _signed(entry["abs_change"]),
            # A smaller G / gap is not "better" in the same sense: no colour for it.
            _pct(entry["rel_change_pct"])
            if key != "ratio_to_gap"
            else Text(fmt_percent(entry["rel_change_pct"])),
        )
    kinds = [document[side].get("bound_kind") for side in ("base", "new")]
    if kinds[0] != kinds[1] or "estimate" in kinds:
        # Text, not markup: the kinds come from the input files.
        table.add_row("bound kind", *(Text(str(kind or "unknown")) for kind in kinds), "", "")
    return table


def measures_table(document: Mapping[str, Any]) -> Table | None:
    """The measures side by side (base → new); None when neither audit has any."""
    measures = document.get("measures") or {}
    if not measures:
        return None
    table = Table(title="Measures (base → new)", title_justify="left", header_style="bold")
    table.add_column("measure")
    for column in ("base", "new", "change", "change %"):
        table.add_column(column, justify="right")
    for name, entry in measures.items():
        table.add_row(
            MEASURE_LABELS.get(name, "?"),
            fmt(entry["base"]),
            fmt(entry["new"]),
            _signed(entry["abs_change"]),
            _pct(entry["rel_change_pct"]),
        )
    return table


def layers_table(document: Mapping[str, Any]) -> Table:
    table = Table(
        title=f"Hcal per layer ({len(document['layers'])} layers in both audits)",
        title_justify="left",
        header_style="bold",
    )
    table.add_column("layer", overflow="fold")
    for column in ("base Hcal", "new Hcal", "change", "change %", "share base → new"):
        table.add_column(column, justify="right")
    for layer in document["layers"]:
        table.add_row(
            Text(plain_text(layer["name"])),
            fmt(layer["base"]),
            fmt(layer["new"]),
            _signed(layer["abs_change"]),
            _pct(layer["rel_change_pct"]),
            f"{100 * layer['base_share']:.1f}% → {100 * layer['new_share']:.1f}%",
        )
    return table


def print_compare(document: Mapping[str, Any]) -> None:
    console = stdout()
    console.print(summary_table(document))
    measures = measures_table(document)
    if measures is not None:
        console.print(measures)
    console.print(layers_table(document))
    for key, label in (("only_in_base", "only in base"), ("only_in_new", "only in new")):
        items = document.get(key) or []
        if items:
            names = ", ".join(
                f"{plain_text(item['name'])} (Hcal {fmt(item['hcal'])})" for item in items
            )
            console.print(Text(f"{label}: {names}", style="yellow"))
    for gate in document.get("gates") or []:
        unit = gate.get("unit", "")
        observed, threshold = fmt_pair(gate["observed"], gate["threshold"])
        if observed != "-":
            observed = ("" if observed.startswith("-") or observed == "0" else "+") + observed
            observed += unit
        where = f" at {gate['worst_layer']}" if gate.get("worst_layer") else ""
        mark = "[green]pass[/green]" if gate["passed"] else "[red]FAIL[/red]"
        if gate.get("observed_is_estimate"):
            mark += " [yellow](on an estimate)[/yellow]"
        console.print(
            Text.from_markup(
                f"gate {console_text(gate['name'])}: {console_text(observed + where)} vs "
                f"{console_text(gate['op'])} {threshold}{console_text(unit)} {mark}",
                emoji=False,
            )
        )
    verdict = "[green]PASS[/green]" if document["success"] else "[red]FAIL[/red]"
    console.print(Text.from_markup(f"compare: {verdict}"))


def print_warnings(warnings: list[str]) -> None:
    for line in warnings:
        warn(line)
