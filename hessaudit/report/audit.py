"""Rendering of a ``hessaudit.audit/1`` document: the per-layer table and the summary panel."""

from __future__ import annotations

import math
import sys
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from hessaudit.bound import C_DOMINANCE_RATIO, estimate_label
from hessaudit.loss_bound import c_source_label
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
            f"form={console_text(settings['form'])}, engine={console_text(settings['engine'])}, "
            f"recipe={console_text(str(settings.get('recipe', 'theorem')))})"
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
    c_note = c_source_label(document["C_source"])
    lines.add_row("training loss Lhat", fmt(document["train_loss"]))
    lines.add_row("loss bound C", f"{fmt(document['C'])}  ({c_note})")
    lines.add_row("n", console_text(document["n"]))
    lines.add_row("epsilon", fmt(document["epsilon"]))
    lines.add_row("Hessian term G", fmt(document["hessian_term"]))
    bound = Text(fmt(document["bound"]), style="bold green")
    label = estimate_label(document)
    if label is not None:
        bound = Text(fmt(document["bound"]), style="bold yellow")
        bound.append(f"  {label}", style="yellow")
    lines.add_row("bound", bound)
    if document["eval_loss"] is not None:
        lines.add_row("held-out loss", fmt(document["eval_loss"]))
        lines.add_row("observed gap", fmt(document["gap"]))
        ratio = document["ratio_to_gap"]
        lines.add_row("G / gap", "- (gap <= 0)" if ratio is None else fmt(ratio))
    for label, text in measures_rows(document.get("measures")):
        lines.add_row(label, text)
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
    dominance = c_dominance_note(document)
    if dominance is not None:
        notes.append(Text(dominance, style="yellow"))
    gates = document.get("gates") or []
    for gate in gates:
        mark = "[green]pass[/green]" if gate["passed"] else "[red]FAIL[/red]"
        observed, threshold = fmt_pair(gate["observed"], gate["threshold"])
        notes.append(
            Text.from_markup(
                f"gate {console_text(gate['name'])}: {observed} vs {console_text(gate['op'])} "
                f"{threshold} {mark}"
                + (" [yellow](on an estimate)[/yellow]" if gate.get("observed_is_estimate")
                   else ""),
                emoji=False,
            )
        )
    title = "Generalization bound (Ju, Li & Zhang 2022, Thm 2.1)"
    return Panel(Group(lines, *notes), title=title, title_align="left", expand=False)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def measures_rows(measures: Any) -> list[tuple[str, str]]:
    """The compact ``measures`` block of the summary panel: (label, text) rows of numbers and
    fixed words only (docs/measure.md, "Measures side by side")."""
    if not isinstance(measures, dict):
        return []
    parts = []
    for key, label in (
        ("sum_sqrt_hcal", "Σ√Hcal"),
        ("distance_fro", "Σ‖v‖"),
        ("distance_fro_sq", "Σ‖v‖²"),
    ):
        value = _num(measures.get(key))
        if value is not None:
            parts.append(f"{label} {fmt(value)}")
    trace = _num(measures.get("trace_distance"))
    if trace is not None:
        stderr = _num(measures.get("trace_distance_stderr"))
        spread = "" if stderr is None else f" ± {fmt(stderr, 2)}"
        parts.append(f"Σ‖v‖²·Tr H {fmt(trace)}{spread}")
    rows = [("other measures", " · ".join(parts))] if parts else []
    noise = measures.get("noise_stability")
    if isinstance(noise, dict) and _num(noise.get("mean")) is not None:
        eps, draws = _num(noise.get("eps")), _num(noise.get("draws"))
        where = "held-out data" if noise.get("data") == "eval_data" else "--data"
        rows.append((
            "noise stability",
            f"{fmt(_num(noise['mean']))} ± {fmt(_num(noise.get('stderr')), 2)} "
            f"(ε {fmt(eps)}, {fmt(draws)} draws, std {fmt(_num(noise.get('std')), 2)}, {where})",
        ))
    return rows


def c_dominance_note(document: dict[str, Any]) -> str | None:
    """One line when C is more than C_DOMINANCE_RATIO times the median per-example loss."""
    ratio, median = document.get("C_over_median_loss"), document.get("median_train_loss")
    if not isinstance(ratio, int | float) or not ratio > C_DOMINANCE_RATIO:
        return None
    median_text = fmt(median) if isinstance(median, int | float) else "-"
    where = (
        "the worst-fitted examples set C"
        if document.get("C_source") == "empirical_max"
        else "C is far above a typical example's loss"
    )
    return (
        f"C is {ratio:.3g}x the median per-example training loss ({median_text}): {where}; "
        f"G grows with √C, {math.sqrt(ratio):.2g}x what C = the median would give "
        "(see --loss-bound)"
    )


def warn_if_estimate(document: dict[str, Any]) -> None:
    """One ``warning:`` line on stderr when the audit's bound is only an estimate.

    A plain write, not rich: rich wraps long lines at 80 columns when stderr is not a terminal.
    """
    label = estimate_label(document)
    if label is None:
        return
    sys.stderr.write(
        f"warning: the bound is an {label}, not Theorem 2.1's bound; audit every example of "
        "--data with the default --reduce/--form for a bound (docs/measure.md)\n"
    )
    sys.stderr.flush()


def print_audit(document: dict[str, Any]) -> None:
    console = stdout()
    console.print(audit_table(document))
    console.print(summary_panel(document))
