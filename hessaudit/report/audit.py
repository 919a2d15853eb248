"""Rendering of a ``hessaudit.audit/1`` document: the per-layer table and the summary panel."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from hessaudit.report._console import stdout
from hessaudit.report._escape import console_text, plain_text
from hessaudit.report._format import fmt_number as fmt
from hessaudit.report._format import fmt_pair

_BAR_WIDTH = 12


def share_bar(share: float) -> Text:
    """A small inline bar for a layer's share of the Hessian term (0..1)."""
    filled = round(max(0.0, min(1.0, share)) * _BAR_WIDTH)
    bar = Text("█" * filled, style="cyan")
    bar.append("░" * (_BAR_WIDTH - filled), style="dim")
    bar.append(f" {100 * share:4.1f}%")
    return bar


def layer_shares(document: dict[str, Any]) -> list[float]:
    """Each layer's share of sum_i sqrt(hcal_i), the quantity the Hessian term scales."""
    roots = [math.sqrt(max(layer["hcal"], 0.0)) for layer in document["layers"]]
    total = sum(roots)
    return [root / total if total > 0 else 0.0 for root in roots]


def audit_table(document: dict[str, Any]) -> Table:
    settings = document["settings"]
    table = Table(
        title=(
            f"Hessian distance per layer  (reduce={console_text(settings['reduce'])}, "
            f"form={console_text(settings['form'])}, engine={console_text(settings['engine'])})"
        ),
        title_justify="left",
        header_style="bold",
    )
    table.add_column("layer", overflow="fold")
    table.add_column("params", justify="right")
    table.add_column("‖v‖", justify="right")
    table.add_column("vᵀHv", justify="right")
    table.add_column("vᵀH⁺v", justify="right")
    table.add_column("Hcal", justify="right")
    table.add_column("share of G", no_wrap=True)
    table.add_column("top eig", justify="right")
    table.add_column("trace ± se", justify="right")
    table.add_column("path")
    for layer, share in zip(document["layers"], layer_shares(document), strict=True):
        name = Text(plain_text(layer["name"]))
        if layer["is_new_head"]:
            name.append(" (new head)", style="magenta")
        hcal = Text(fmt(layer["hcal"]))
        if layer.get("clamped"):
            hcal.append(" (clamped)", style="yellow")
        trace = "-"
        if layer["trace"] is not None:
            trace = f"{fmt(layer['trace'], 3)} ± {fmt(layer['trace_stderr'], 2)}"
        path = Text(plain_text(layer.get("engine_path", "-")))
        if not layer["converged"]:
            path.append(" (not converged)", style="red")
        table.add_row(
            name,
            f"{layer['numel']:,}",
            fmt(layer["dist_fro"]),
            fmt(layer["quad_raw"]),
            fmt(layer["quad_pos"]),
            hcal,
            share_bar(share),
            fmt(layer["top_eig"]),
            trace,
            path,
        )
    return table


def summary_panel(document: dict[str, Any]) -> Panel:
    lines = Table.grid(padding=(0, 2))
    lines.add_column(style="bold")
    lines.add_column()
    c_note = "empirical max per-example loss" if document["C_source"] == "empirical_max" else "user"
    lines.add_row("training loss Lhat", fmt(document["train_loss"]))
    lines.add_row("loss bound C", f"{fmt(document['C'])}  ({c_note})")
    lines.add_row("n", console_text(document["n"]))
    lines.add_row("epsilon", fmt(document["epsilon"]))
    lines.add_row("Hessian term G", fmt(document["hessian_term"]))
    lines.add_row("bound", Text(fmt(document["bound"]), style="bold green"))
    if document["eval_loss"] is not None:
        lines.add_row("held-out loss", fmt(document["eval_loss"]))
        lines.add_row("observed gap", fmt(document["gap"]))
        ratio = document["ratio_to_gap"]
        lines.add_row("G / gap", "- (gap <= 0)" if ratio is None else fmt(ratio))
    notes = [
        Text(f"bound = (1+ε)·Lhat + (1+ε)·G; {plain_text(document['bound_note'])}.", style="dim")
    ]
    if document.get("clamped_layers"):
        notes.append(
            Text(
                "negative values counted as 0 for: "
                + ", ".join(plain_text(name) for name in document["clamped_layers"]),
                style="yellow",
            )
        )
    gates = document.get("gates") or []
    for gate in gates:
        mark = "[green]pass[/green]" if gate["passed"] else "[red]FAIL[/red]"
        observed, threshold = fmt_pair(gate["observed"], gate["threshold"])
        notes.append(
            Text.from_markup(
                f"gate {console_text(gate['name'])}: {observed} vs {console_text(gate['op'])} "
                f"{threshold} {mark}",
                emoji=False,
            )
        )
    title = "Generalization bound (Ju, Li & Zhang 2022, Thm 2.1)"
    return Panel(Group(lines, *notes), title=title, title_align="left", expand=False)


def print_audit(document: dict[str, Any]) -> None:
    console = stdout()
    console.print(audit_table(document))
    console.print(summary_panel(document))
