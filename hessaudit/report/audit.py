"""Rendering of a ``hessaudit.audit/1`` document: the per-layer table and the summary panel."""

from __future__ import annotations

import math
import sys
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from hessaudit.audit import gates
from hessaudit.audit.bound import C_DOMINANCE_RATIO, estimate_label
from hessaudit.audit.loss_bound import c_source_label
from hessaudit.report._format import fmt_fraction, fmt_pair
from hessaudit.report._format import fmt_number as fmt
from hessaudit.report._layout import Column, fit_table, merge_identical
from hessaudit.report.console import print_table, stdout, table_width
from hessaudit.report.escape import console_text, visible
from hessaudit.report.groups import group_rows

_BAR_WIDTH = 12
#: Ranks of the per-layer table's steps (lowest first; see hessaudit.report._layout).
_R_PATH, _R_BAR, _R_TWO_LINES, _R_NAME, _R_TRACE_LINES = 10, 20, 25, 30, 35
_R_TOP_EIG, _R_TRACE, _R_PERCENT, _R_PARAMS, _R_DIST, _R_RAW, _R_POS = 40, 50, 60, 70, 80, 90, 95


def share_bar(share: float, width: int = _BAR_WIDTH) -> Text:
    """A small inline bar for a layer's share of the Hessian term (0..1), then the percent."""
    filled = round(max(0.0, min(1.0, share)) * width)
    bar = Text("█" * filled, style="cyan")
    bar.append("░" * (width - filled), style="dim")
    bar.append(" " + share_percent(share))
    return bar


def share_percent(share: float) -> str:
    """A share as a percentage aligned in a column: ``  5.0%``, `` 42.5%``, ``100.0%``."""
    return fmt_fraction(share).rjust(6)


def layer_shares(document: dict[str, Any]) -> list[float]:
    """Each layer's share of sum_i sqrt(hcal_i), the quantity the Hessian term scales
    (:func:`hessaudit.audit.gates.layer_shares` of the document's layers)."""
    return gates.layer_shares(document["layers"])


def _with_note(value: str, note: str | None, style: str) -> tuple[Text, Text]:
    """``value (note)`` on one line, and on two lines (the narrow form)."""
    one, two = Text(value), Text(value)
    if note is not None:
        one.append(f" ({note})", style=style)
        two.append(f"\n({note})", style=style)
    return one, two


def _columns(document: dict[str, Any]) -> tuple[list[Column], str | None]:
    """The per-layer table's columns, and the engine path when every layer shares it (and
    converged): that column is then the first to go, into the title."""
    layers = document["layers"]
    shares = layer_shares(document)
    hcal = [_with_note(fmt(la["hcal"]), "clamped" if la.get("clamped") else None, "yellow")
            for la in layers]
    paths = [_with_note(visible(la.get("engine_path", "-")),
                        None if la["converged"] else "not converged", "red") for la in layers]
    plain_paths = {la.get("engine_path", "-") for la in layers}
    uniform = len(plain_paths) == 1 and all(la["converged"] for la in layers)
    columns = [
        Column("layer", "layer", [visible(la["name"]) for la in layers], "left", "name",
               shrink=_R_NAME,
               suffixes=[Text("(new head)", style="magenta") if la["is_new_head"] else None
                         for la in layers]),
        Column("params", "params", [f"{la['numel']:,}" for la in layers], drop=_R_PARAMS),
        Column("dist", "‖v‖", [fmt(la["dist_fro"]) for la in layers], drop=_R_DIST),
        Column("raw", "vᵀHv", [fmt(la["quad_raw"]) for la in layers], drop=_R_RAW),
        Column("pos", "vᵀH⁺v", [fmt(la["quad_pos"]) for la in layers], drop=_R_POS),
        Column("hcal", "Hcal", [one for one, _ in hcal],
               forms=[(_R_TWO_LINES, [two for _, two in hcal])]),
        Column("share", "share of G", [share_bar(s) for s in shares], "left",
               forms=[(_R_BAR, [share_bar(s, _BAR_WIDTH // 2) for s in shares]),
                      (_R_PERCENT, [share_percent(s) for s in shares])]),
    ]
    if any(la["top_eig"] is not None for la in layers):
        columns.append(Column("top_eig", "top eig", [fmt(la["top_eig"]) for la in layers],
                              drop=_R_TOP_EIG))
    if any(la["trace"] is not None for la in layers):
        traces = [("-", "-") if la["trace"] is None else
                  (fmt(la["trace"], 3), fmt(la["trace_stderr"], 2)) for la in layers]
        columns.append(Column(
            "trace", "trace ± se",
            [t if t == "-" else f"{t} ± {se}" for t, se in traces],
            forms=[(_R_TRACE_LINES, [t if t == "-" else f"{t}\n± {se}" for t, se in traces])],
            drop=_R_TRACE))
    columns.append(Column("path", "path", [one for one, _ in paths], "left",
                          forms=[(_R_TWO_LINES, [two for _, two in paths])],
                          drop=_R_PATH if uniform else None))
    return merge_identical(columns, ("raw", "pos", "hcal")), plain_paths.pop() if uniform else None


def audit_table(document: dict[str, Any], width: int | None = None) -> Table:
    """The per-layer table, laid out for ``width`` cells (``None``: as wide as it needs).

    Form columns that read the same (vᵀHv, vᵀH⁺v and Hcal on the JVP path) are one column;
    spectrum columns appear only when computed.
    """
    settings = document["settings"]
    columns, path = _columns(document)
    table, chosen = fit_table(columns, width)
    where = f", path={console_text(path)}" if path is not None and "path" in chosen.dropped else ""
    table.title = (
        f"Hessian distance per layer  (reduce={console_text(settings['reduce'])}, "
        f"form={console_text(settings['form'])}, engine={console_text(settings['engine'])}"
        f"{where}, recipe={console_text(str(settings.get('recipe', 'theorem')))})"
    )
    if path is not None and "path" in chosen.dropped:
        # The path column went into the title: not "left out".
        left_out = [c.header for c in columns if c.key in chosen.dropped and c.key != "path"]
        table.caption = (
            Text(f"not shown at this width: {', '.join(left_out)}", style="dim")
            if left_out else None
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
    for label, text in group_rows(document):  # G per module group (attention, linear, ...)
        lines.add_row(label, text)
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
        Text(f"bound = (1+ε)·Lhat + (1+ε)·G; {visible(document['bound_note'])}.", style="dim")
    ]
    if document.get("clamped_layers"):
        notes.append(
            Text(
                "negative values counted as 0 for: "
                + ", ".join(visible(name) for name in document["clamped_layers"]),
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


def print_audit(document: dict[str, Any], console: Console | None = None) -> None:
    console = console or stdout()
    print_table(console, audit_table(document, table_width(console)))
    console.print(summary_panel(document))
