"""Rendering of a ``hessaudit.compare/1`` document: summary changes, per-layer changes, gates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from hessaudit.audit.compare import SUMMARY_LABELS
from hessaudit.audit.measures import MEASURE_LABELS
from hessaudit.report._format import fmt_fraction, fmt_pair, fmt_percent, fmt_signed
from hessaudit.report._format import fmt_number as fmt
from hessaudit.report._layout import Column, fit_table
from hessaudit.report.console import print_table, stdout, table_width, warn
from hessaudit.report.escape import console_text, visible


def _pct(value: float | None, *, worse_if_up: bool = True) -> Text:
    if value is None:
        return Text("-", style="dim")
    style = ""
    if abs(value) >= 0.05:
        style = "red" if (value > 0) == worse_if_up else "green"
    return Text(fmt_percent(value), style=style)


def summary_table(document: Mapping[str, Any], width: int | None = None) -> Table:
    """The summary's changes, laid out for ``width`` cells (``None``: as wide as it needs)."""
    rows = []
    for key, label in SUMMARY_LABELS.items():
        entry = document["summary"].get(key)
        if entry is None or (entry["base"] is None and entry["new"] is None):
            continue
        # A smaller G / gap is not "better" in the same sense: no colour for it.
        change = (_pct(entry["rel_change_pct"]) if key != "ratio_to_gap"
                  else Text(fmt_percent(entry["rel_change_pct"])))
        rows.append((label, fmt(entry["base"]), fmt(entry["new"]),
                     fmt_signed(entry["abs_change"]), change))
    kinds = [document[side].get("bound_kind") for side in ("base", "new")]
    if kinds[0] != kinds[1] or "estimate" in kinds:
        # Text, not markup: the kinds come from the input files.
        rows.append(("bound kind", *(visible(kind or "unknown") for kind in kinds), "", ""))
    cells = list(zip(*rows, strict=True)) if rows else [()] * 5
    columns = [Column("quantity", "quantity", cells[0], "left", "prose")]
    columns += [Column(key, key, cells[i + 1]) for i, key in
                enumerate(("base", "new", "change", "change %"))]
    table, _ = fit_table(columns, width, title="Summary (base → new)")
    return table


def layers_table(document: Mapping[str, Any], width: int | None = None) -> Table:
    """Hcal per layer, laid out for ``width`` cells (``None``: as wide as it needs)."""
    layers = document["layers"]
    shares = [(fmt_fraction(la["base_share"]), fmt_fraction(la["new_share"])) for la in layers]
    columns = [
        Column("layer", "layer", [visible(la["name"]) for la in layers], "left", "name",
               shrink=30),
        Column("base", "base Hcal", [fmt(la["base"]) for la in layers], drop=60),
        Column("new", "new Hcal", [fmt(la["new"]) for la in layers]),
        Column("change", "change", [fmt_signed(la["abs_change"]) for la in layers], drop=40),
        Column("pct", "change %", [_pct(la["rel_change_pct"]) for la in layers]),
        Column("share", "share base → new", [f"{b} → {n}" for b, n in shares],
               forms=[(20, [f"{b}\n→ {n}" for b, n in shares])], drop=50),
    ]
    table, _ = fit_table(
        columns, width,
        title=f"Hcal per layer ({len(layers)} layers in both audits)",
    )
    return table


def measures_table(document: Mapping[str, Any], width: int | None = None) -> Table | None:
    """The measures side by side (base → new), laid out for ``width`` cells; None when
    neither audit has any."""
    measures = document.get("measures") or {}
    if not measures:
        return None
    entries = list(measures.items())
    columns = [
        Column("measure", "measure", [MEASURE_LABELS.get(name, "?") for name, _ in entries],
               "left", "prose"),
        Column("base", "base", [fmt(e["base"]) for _, e in entries]),
        Column("new", "new", [fmt(e["new"]) for _, e in entries]),
        Column("change", "change", [fmt_signed(e["abs_change"]) for _, e in entries]),
        Column("pct", "change %", [_pct(e["rel_change_pct"]) for _, e in entries]),
    ]
    table, _ = fit_table(columns, width, title="Measures (base → new)")
    return table


def print_compare(document: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or stdout()
    width = table_width(console)
    tables = [summary_table(document, width), measures_table(document, width),
              layers_table(document, width)]
    print_table(console, *(table for table in tables if table is not None))
    for key, label in (("only_in_base", "only in base"), ("only_in_new", "only in new")):
        items = document.get(key) or []
        if items:
            names = ", ".join(
                f"{visible(item['name'])} (Hcal {fmt(item['hcal'])})" for item in items
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
