"""Short markdown reports for people: a CI job summary or a pull-request comment.

The verdict comes first (PASS / FAIL, with the failing gates named and their numbers), then
the summary quantities, the gates, and the per-layer table (folded away in ``<details>`` when it
is long). Everything is rendered from the JSON documents (``hessaudit.audit/1`` and
``hessaudit.compare/1``), so a report can be rebuilt from a saved file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from hessaudit._paths import write_output
from hessaudit.audit.bound import estimate_label
from hessaudit.audit.compare import SUMMARY_LABELS
from hessaudit.audit.gates import layer_shares
from hessaudit.audit.loss_bound import c_source_label
from hessaudit.report._format import fmt_fraction, fmt_pair, fmt_percent, fmt_signed
from hessaudit.report._format import fmt_number as fmt
from hessaudit.report.escape import md_code, md_text

# Tables with more rows than this are folded into <details>.
FOLD_ROWS = 15
_BAR = 10


# A pipe not already escaped (strings from inputs come escaped by md_text).
_RAW_PIPE = re.compile(r"(?<!\\)\|")


def _cell(text: Any) -> str:
    return _RAW_PIPE.sub(r"\\|", str(text).replace("\n", " "))


# Every string from an input (names, paths, JSON fields) goes through md_code / md_text.
_code = md_code


def _bar(share: float) -> str:
    filled = round(max(0.0, min(1.0, share)) * _BAR)
    return "█" * filled + "░" * (_BAR - filled)


def _table(header: Sequence[str], align: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fold(title: str, body: str, rows: int) -> str:
    if rows <= FOLD_ROWS:
        return f"**{title}**\n\n{body}"
    return f"<details>\n<summary>{title}</summary>\n\n{body}\n\n</details>"


def _gate_numbers(gate: Mapping[str, Any]) -> tuple[str, str]:
    """Observed value and threshold, with enough digits to differ when they do."""
    observed, threshold = fmt_pair(gate["observed"], gate["threshold"])
    unit = md_text(gate.get("unit", ""))
    if observed != "-" and gate.get("unit") == "%":
        observed = ("" if observed.startswith("-") or observed == "0" else "+") + observed + unit
    return observed, threshold + unit


def gate_line(gate: Mapping[str, Any]) -> str:
    """One gate in words: ``max-bound``: 1.42 (needs <= 1.2), plus the worst layer if any."""
    observed, threshold = _gate_numbers(gate)
    text = f"{_code(gate['name'])}: {observed} (needs {md_text(gate['op'])} {threshold})"
    if gate.get("worst_layer") is not None:
        text += f" at {_code(gate['worst_layer'])}"
        failing = gate.get("failing_layers") or []
        if failing:
            text += f"; {len(failing)} of {md_text(gate['layers_matched'])} matching layers fail"
    if gate.get("observed_is_estimate"):
        text += " (observed value is an estimate)"
    if gate.get("note"):
        text += f" — {md_text(gate['note'])}"
    return text


def verdict(document: Mapping[str, Any], command: str) -> str:
    """The heading and, on failure, the list of failing gates."""
    gates = document.get("gates") or []
    failing = [gate for gate in gates if not gate["passed"]]
    if failing:
        names = ", ".join(_code(gate["name"]) for gate in failing)
        head = (
            f"### ❌ hessaudit {command}: FAIL — {len(failing)} of {len(gates)} gates failed: "
            + names
        )
        lines = [head, ""]
        lines += [f"- {gate_line(gate)}" for gate in failing]
        return "\n".join(lines)
    if gates:
        return f"### ✅ hessaudit {command}: PASS — all {len(gates)} gates passed"
    return f"### ✅ hessaudit {command}: PASS (no gates set)"


def _gates_table(gates: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for gate in gates:
        observed, threshold = _gate_numbers(gate)
        where = gate.get("worst_layer")
        rows.append(
            [
                _code(gate["name"]),
                observed
                + (f" ({_code(where)})" if where else "")
                + (" (estimate)" if gate.get("observed_is_estimate") else ""),
                f"{md_text(gate['op'])} {threshold}",
                "pass" if gate["passed"] else "**FAIL**",
            ]
        )
    table = _table(["gate", "observed", "threshold", "result"], "lrrl", rows)
    notes = [
        f"- {_code(gate['name'])}: {md_text(gate['note'])}" for gate in gates if gate.get("note")
    ]
    return "\n\n".join([table, "\n".join(notes)]) if notes else table


def audit_markdown(document: Mapping[str, Any]) -> str:
    """The report for one audit (``hessaudit measure --summary-md``)."""
    inputs = document.get("inputs") or {}
    settings = document.get("settings") or {}
    finetuned = inputs.get("finetuned") or {}
    parts = [verdict(document, "measure")]
    context = [
        f"model {_code(inputs.get('model'))}",
        f"fine-tuned {_code(finetuned.get('path'))}",
        f"data {_code(inputs.get('data'))}",
        f"reduce={md_text(settings.get('reduce'))}, form={md_text(settings.get('form'))}",
    ]
    parts.append(" · ".join(context))
    label = estimate_label(document)
    if label is not None:
        parts.append(
            f"> ⚠️ The bound is an {md_text(label)}, not Theorem 2.1's bound "
            "(see docs/measure.md, \"Bound or estimate\")."
        )
    rows = [
        ["bound", f"**{fmt(document['bound'])}**" + (f" {md_text(label)}" if label else "")],
        ["Hessian term G", fmt(document["hessian_term"])],
        ["training loss", fmt(document["train_loss"])],
    ]
    if document.get("eval_loss") is not None:
        ratio = document.get("ratio_to_gap")
        rows += [
            ["held-out loss", fmt(document["eval_loss"])],
            ["observed gap", fmt(document.get("gap"))],
            ["G / gap", "- (gap <= 0)" if ratio is None else fmt(ratio)],
        ]
    c_note = c_source_label(document.get("C_source"))
    rows += [
        ["loss bound C", f"{fmt(document.get('C'))} ({c_note})"],
        ["n", md_text(document.get("n"))],
    ]
    parts.append(_table(["quantity", "value"], "lr", rows))
    gates = document.get("gates") or []
    if gates:
        parts.append(_gates_table(gates))
    layers = document.get("layers") or []
    layer_rows = [
        [
            _code(layer["name"]) + (" (new head)" if layer.get("is_new_head") else ""),
            f"{layer.get('numel', 0):,}",
            fmt(layer.get("dist_fro")),
            fmt(layer["hcal"]),
            f"{_bar(share)} {fmt_fraction(share)}",
        ]
        for layer, share in zip(layers, layer_shares(layers), strict=True)
    ]
    table = _table(["layer", "params", "‖v‖", "Hcal", "share of G"], "lrrrl", layer_rows)
    parts.append(_fold(f"Per-layer Hessian distance ({len(layers)} layers)", table, len(layers)))
    note = document.get("bound_note")
    if note:
        parts.append(f"<sub>bound = (1+ε)·Lhat + (1+ε)·G; {md_text(note)}.</sub>")
    return "\n\n".join(parts) + "\n"


def compare_markdown(document: Mapping[str, Any]) -> str:
    """The report for a comparison (``hessaudit compare --summary-md``)."""
    base, new = document["base"], document["new"]
    parts = [verdict(document, "compare")]
    parts.append(f"base {_code(base.get('path'))} → new {_code(new.get('path'))}")
    if document.get("warnings"):
        parts.append("\n".join(f"> ⚠️ {md_text(w)}" for w in document["warnings"]))
    rows = [
        [
            label,
            fmt(entry["base"]),
            fmt(entry["new"]),
            fmt_signed(entry["abs_change"]),
            fmt_percent(entry["rel_change_pct"]),
        ]
        for key, label in SUMMARY_LABELS.items()
        if (entry := document["summary"].get(key)) is not None
        and (entry["base"] is not None or entry["new"] is not None)
    ]
    parts.append(_table(["quantity", "base", "new", "change", "change %"], "lrrrr", rows))
    gates = document.get("gates") or []
    if gates:
        parts.append(_gates_table(gates))
    layers = document.get("layers") or []
    layer_rows = [
        [
            _code(layer["name"]),
            fmt(layer["base"]),
            fmt(layer["new"]),
            fmt_signed(layer["abs_change"]),
            fmt_percent(layer["rel_change_pct"]),
        ]
        for layer in layers
    ]
    table = _table(["layer", "base Hcal", "new Hcal", "change", "change %"], "lrrrr", layer_rows)
    parts.append(_fold(f"Hcal per layer ({len(layers)} layers in both)", table, len(layers)))
    for key, label in (("only_in_base", "Only in base"), ("only_in_new", "Only in new")):
        if document.get(key):
            names = ", ".join(
                f"{_code(item['name'])} (Hcal {fmt(item['hcal'])})" for item in document[key]
            )
            parts.append(f"**{label}:** {names}")
    return "\n\n".join(parts) + "\n"


def write_summary(path: str, text: str) -> None:
    """Write a markdown report ('-': stdout); append when ``path`` is ``$GITHUB_STEP_SUMMARY``.

    GitHub collects whatever a step appends to that file, and several commands of one step
    may write to it; anywhere else the file is replaced atomically.
    """
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary and os.path.abspath(path) == os.path.abspath(step_summary):
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
        return
    write_output("--summary-md", path, text)
