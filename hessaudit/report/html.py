"""A single self-contained HTML page for one audit (``hessaudit report``).

Inline CSS, the per-layer plot embedded as a base64 PNG, no scripts and no external URLs, so
the page can be attached to a CI run, mailed, or opened offline. The plot uses matplotlib
(the ``examples`` extra) through its Agg canvas, without pyplot, so no global backend state is
touched; without matplotlib the page shows the same bars in plain HTML/CSS and says so.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from hessaudit.audit.bound import estimate_label
from hessaudit.audit.gates import layer_shares
from hessaudit.audit.loss_bound import c_source_label
from hessaudit.report._format import fmt_fraction, fmt_pair
from hessaudit.report._format import fmt_number as fmt
from hessaudit.report._html_fields import fields_section, measures_section
from hessaudit.report._html_plot import plot_png
from hessaudit.report._html_style import CSS
from hessaudit.report.escape import visible

#: Top-level keys the page's own sections show; "Every field of the audit file" shows the rest
#: (with all of ``inputs``, ``settings`` and ``layers``).
_SHOWN = frozenset(
    {
        "inputs", "settings", "layers", "gates", "success", "tool_version", "created",
        "train_loss", "eval_loss", "gap", "ratio_to_gap", "n", "C", "C_source", "epsilon",
        "hessian_term", "bound", "bound_note", "bound_kind", "estimate_reasons", "hcal_scope",
        "median_train_loss", "C_over_median_loss", "clamped_layers",
    }
)  # fmt: skip


def _e(value: Any) -> str:
    return html.escape(visible(value), quote=True)


def _failing_layers(gates: Sequence[Mapping[str, Any]]) -> set[str]:
    return {name for gate in gates if not gate["passed"] for name in gate.get("failing_layers", [])}


def _css_bar(fraction: float, *, failing: bool = False) -> str:
    width = max(0.0, min(1.0, fraction)) * 100
    cls = "bar failing" if failing else "bar"
    return f'<span class="{cls}"><span style="width:{width:.1f}%"></span></span>'


def _kv_table(rows: Sequence[tuple[str, str]], *, right: bool = True) -> str:
    """Label / value rows (values are HTML already); values wrap rather than widen the page."""
    cls = "val right" if right else "val"
    body = "".join(
        f'<tr><td class="key">{_e(k)}</td><td class="{cls}">{v}</td></tr>' for k, v in rows
    )
    return f'<div class="scroll"><table>{body}</table></div>'


def _verdict(document: Mapping[str, Any]) -> str:
    gates = document.get("gates") or []
    failing = [gate for gate in gates if not gate["passed"]]
    if failing:
        items = "".join(
            f"<li><code>{_e(g['name'])}</code>: {_e(fmt_pair(g['observed'], g['threshold'])[0])} "
            f"(needs {_e(g['op'])} {_e(fmt_pair(g['observed'], g['threshold'])[1])})"
            + (f" at <code>{_e(g['worst_layer'])}</code>" if g.get("worst_layer") else "")
            + (f" — {_e(g['note'])}" if g.get("note") else "")
            + "</li>"
            for g in failing
        )
        return (
            f'<div class="verdict fail"><b>FAIL</b> — {len(failing)} of {len(gates)} gates '
            f"failed<ul>{items}</ul></div>"
        )
    text = f"all {len(gates)} gates passed" if gates else "no gates set"
    return f'<div class="verdict pass"><b>PASS</b> — {_e(text)}</div>'


def _estimate_note(document: Mapping[str, Any]) -> str:
    label = estimate_label(document)
    if label is None:
        return ""
    return (
        f'<p class="estimate">The bound is an <b>{_e(label)}</b>, not Theorem 2.1\'s bound; '
        "gates on it compare an estimate (see docs/measure.md, “Bound or estimate”).</p>"
    )


def _cell(label: str, content: str, cls: str = "") -> str:
    """A cell labelled by its column (``data-label``), for the stacked layout on phones."""
    attr = f' class="{cls}"' if cls else ""
    return f'<td{attr} data-label="{_e(label)}">{content}</td>'


def _stack_table(headers: Sequence[tuple[str, str]], rows: Sequence[str]) -> str:
    """A table that scrolls inside the page when too wide, and stacks on narrow screens."""
    head = "".join(
        f'<th class="{cls}">{label}</th>' if cls else f"<th>{label}</th>" for label, cls in headers
    )
    return (
        f'<div class="scroll"><table class="stack"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _gates_section(gates: Sequence[Mapping[str, Any]]) -> str:
    if not gates:
        return ""
    rows = []
    for g in gates:
        observed, threshold = fmt_pair(g["observed"], g["threshold"])
        estimate = ' <span class="tag est">estimate</span>' if g.get("observed_is_estimate") else ""
        worst = f"<code>{_e(g['worst_layer'])}</code>" if g.get("worst_layer") else ""
        if worst and g.get("layers_matched") is not None:
            worst += f' <span class="note">(worst of {_e(fmt(g["layers_matched"]))})</span>'
        result = (
            _cell("result", "pass", "pass-cell")
            if g["passed"]
            else _cell("result", "FAIL", "fail-cell")
        )
        rows.append(
            "<tr>"
            + _cell("gate", f"<code>{_e(g['name'])}</code>", "first")
            + _cell("observed", _e(observed) + estimate, "num")
            + _cell("threshold", f"{_e(g['op'])} {_e(threshold)}", "num")
            + _cell("worst layer", worst)
            + _cell("from", _e(g.get("source", "")))
            + result
            + "</tr>"
        )
    notes = "".join(
        f"<li><code>{_e(g['name'])}</code>: {_e(g['note'])}</li>" for g in gates if g.get("note")
    )
    headers = [("gate", ""), ("observed", "num"), ("threshold", "num"), ("worst layer", ""),
               ("from", ""), ("result", "")]  # fmt: skip
    return (
        "<h2>Gates</h2>"
        + _stack_table(headers, rows)
        + (f'<ul class="note">{notes}</ul>' if notes else "")
    )


def _summary_rows(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    label = estimate_label(document)
    rows = [
        (
            "bound",
            f'<span class="bound">{_e(fmt(document["bound"]))}</span>'
            + (f' <span class="tag est">{_e(label)}</span>' if label else ""),
        ),
        *_kind_rows(document),
        ("Hessian term G", _e(fmt(document["hessian_term"]))),
        ("training loss Lhat", _e(fmt(document["train_loss"]))),
    ]
    if document.get("eval_loss") is not None:
        ratio = document.get("ratio_to_gap")
        rows += [
            ("held-out loss", _e(fmt(document["eval_loss"]))),
            ("observed gap", _e(fmt(document.get("gap")))),
            ("G / gap", "- (gap ≤ 0)" if ratio is None else _e(fmt(ratio))),
        ]
    c_note = _e(c_source_label(document.get("C_source")))
    rows += [
        ("loss bound C", f"{_e(fmt(document.get('C')))} <span class='note'>({c_note})</span>"),
        ("n", _e(document.get("n"))),
        ("epsilon", _e(fmt(document.get("epsilon")))),
    ]
    for key, label in (("median_train_loss", "median loss"), ("C_over_median_loss", "C / median")):
        if document.get(key) is not None:
            rows.append((label, _e(fmt(document[key]))))
    return rows


def _kind_rows(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``bound_kind`` (bound or estimate, with ``estimate_reasons``) and ``hcal_scope``; no row
    for an audit written before they existed."""
    kind, scope = document.get("bound_kind"), document.get("hcal_scope")
    if kind is None and scope is None:
        return []
    if kind == "bound":
        shown = '<span class="tag ok">bound</span> Theorem 2.1'
    elif kind == "estimate":
        reasons = document.get("estimate_reasons")
        reasons = reasons if isinstance(reasons, list) else []
        shown = '<span class="tag est">estimate</span>' + "".join(
            f'<br><span class="note">{_e(reason)}</span>' for reason in reasons
        )
    else:
        shown = _e(fmt(kind) if kind is None else kind)
    scopes = {"all": "every example of the data", "subset": "a subset of the data"}
    scope_text = scopes.get(scope, scope) if isinstance(scope, str) else fmt(scope)
    return [("bound kind", shown), ("Hcal taken over", _e(scope_text))]


def _digest(sha: Any) -> str:
    """A SHA-256 digest shortened to 12 digits, whole on hover (and under "Every field")."""
    text = visible(sha)
    short = text if len(text) <= 16 else text[:12] + "…"
    return f' <span class="digest" title="sha256 {_e(text)}">sha256 {_e(short)}</span>'


def _input_rows(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    inputs = _mapping(document.get("inputs"))
    settings = _mapping(document.get("settings"))

    def checkpoint(key: str) -> str:
        record = _mapping(inputs.get(key))
        sha = record.get("sha256")
        return f"<code>{_e(record.get('path', '-'))}</code>" + (_digest(sha) if sha else "")

    rows = [
        ("model", f"<code>{_e(inputs.get('model', '-'))}</code>"),
        ("pretrained", checkpoint("pretrained")),
        ("fine-tuned", checkpoint("finetuned")),
        ("data", f"<code>{_e(inputs.get('data', '-'))}</code>"),
    ]
    if inputs.get("eval_data"):
        rows.append(("held-out data", f"<code>{_e(inputs['eval_data'])}</code>"))
    rows += [
        ("audit examples", _e(inputs.get("audit_examples", "-"))),
        ("reduce / form", _e(f"{settings.get('reduce', '-')} / {settings.get('form', '-')}")),
        ("engine", _e(settings.get("engine", "-"))),
        ("seed", _e(inputs.get("seed", "-"))),
    ]
    return rows


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is an object, else an empty one (a file may hold anything)."""
    return value if isinstance(value, Mapping) else {}


def _differs(layers: Sequence[Mapping[str, Any]], key: str) -> bool:
    """Whether column ``key`` shows something the Hcal column does not (vᵀHv and vᵀH⁺v equal
    Hcal on the JVP path and for their own form: identical columns are left out)."""
    return any(key in layer and fmt(layer[key]) != fmt(layer["hcal"]) for layer in layers)


def _layer_columns(layers: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(key, header, class) of the per-layer table's columns that have something to show."""
    columns = [("name", "layer", ""), ("numel", "params", "num"), ("dist_fro", "‖v‖", "num")]
    columns += [(k, h, "num") for k, h in (("quad_raw", "vᵀHv"), ("quad_pos", "vᵀH⁺v"))
                if _differs(layers, k)]  # fmt: skip
    columns += [("hcal", "Hcal", "num"), ("share", "share of G", "share")]
    for key, header, cls in (("top_eig", "top eig", "num"), ("trace", "trace ± se", "num"),
                             ("engine_path", "engine path", "")):  # fmt: skip
        if any(layer.get(key) is not None for layer in layers):
            columns.append((key, header, cls))
    return columns


def _layer_cell(layer: Mapping[str, Any], key: str) -> str:
    """The HTML of one per-layer cell other than the name, Hcal and share."""
    value = layer.get(key)
    if key == "numel":  # thousands separators: parameter counts run to millions
        return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "-"
    if key == "trace":  # a Hutchinson estimate: the digits its standard error supports
        stderr = layer.get("trace_stderr")
        return _e(fmt(value, 3)) + (f" ± {_e(fmt(stderr, 2))}" if stderr is not None else "")
    if key == "engine_path":
        converged = layer.get("converged") is not False
        tag = "" if converged else ' <span class="tag fail">not converged</span>'
        return f"<code>{_e(value if value is not None else '-')}</code>{tag}"
    return _e(fmt(value))


def _layers_section(document: Mapping[str, Any], failing: set[str], *, hcal_bars: bool) -> str:
    layers = list(document["layers"])
    shares = layer_shares(layers)
    top = max((max(float(layer["hcal"]), 0.0) for layer in layers), default=0.0)
    columns = _layer_columns(layers)
    rows = []
    for layer, share in zip(layers, shares, strict=True):
        bad = layer["name"] in failing
        cells = []
        for key, header, cls in columns:
            if key == "name":
                content, cls = f'<code class="name">{_e(layer["name"])}</code>', "first"
                if layer.get("is_new_head"):
                    content += ' <span class="tag head">new head</span>'
                if bad:
                    content += ' <span class="tag fail">fails a gate</span>'
            elif key == "hcal":
                content = _e(fmt(layer["hcal"]))
                if layer.get("clamped"):
                    content += ' <span class="tag est">clamped</span>'
                if hcal_bars:
                    fraction = max(float(layer["hcal"]), 0.0) / top if top > 0 else 0.0
                    content = _css_bar(fraction, failing=bad) + content
            elif key == "share":
                content = f"{_css_bar(share, failing=bad)}{fmt_fraction(share)}"
            else:
                content = _layer_cell(layer, key)
            cells.append(_cell(header, content, cls))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<h2>Per-layer Hessian distance ({len(layers)} layers)</h2>" + _stack_table(
        [(header, cls) for _, header, cls in columns], rows
    )


def audit_html(
    document: Mapping[str, Any], *, title: str | None = None, plots: bool = True
) -> tuple[str, bool]:
    """The page for one ``hessaudit.audit/1`` document, and whether a matplotlib plot is in it.

    With ``plots=False``, or without matplotlib, the bars are drawn in HTML/CSS instead (the
    second value is then False; it is also False for an audit without layers).
    """
    gates = document.get("gates") or []
    failing = _failing_layers(gates)
    has_layers = bool(document.get("layers"))
    png = plot_png(document, highlight=failing) if plots and has_layers else None
    inputs = _mapping(document.get("inputs"))
    finetuned = _mapping(inputs.get("finetuned")).get("path", "")
    title = title or f"hessaudit audit: {finetuned or inputs.get('model', '')}"
    if png is not None:
        encoded = base64.b64encode(png).decode("ascii")
        plot = (
            '<div class="plot"><img alt="Per-layer Hcal and share of the Hessian term" '
            f'src="data:image/png;base64,{encoded}"></div>'
        )
    elif not has_layers:
        plot = '<p class="note">The audit has no layers.</p>'
    else:
        why = (
            "matplotlib is not installed (pip install 'hessaudit[examples]' for plots)"
            if plots
            else "plots were turned off"
        )
        plot = f'<p class="note">{_e(why)}: the bars below are drawn in plain HTML.</p>'
    note = document.get("bound_note", "")
    settings = _mapping(document.get("settings"))
    head = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
    )
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">Hessian distance audit (Ju, Li &amp; Zhang, ICML 2022, Theorem 2.1) · '
        f"reduce={_e(settings.get('reduce', '-'))}, form={_e(settings.get('form', '-'))} · "
        f"hessaudit {_e(document.get('tool_version', ''))} · {_e(document.get('created', ''))}</p>",
        _verdict(document),
        _estimate_note(document),
        '<div class="grid"><div><h2>Bound</h2>'
        + _kv_table(_summary_rows(document))
        + "</div><div><h2>Inputs</h2>"
        + _kv_table(_input_rows(document), right=False)
        + "</div></div>",
        measures_section(document.get("measures")),
        _gates_section(gates),
        "<h2>Per-layer bars</h2>" + plot,
        _layers_section(document, failing, hcal_bars=png is None),
        f'<p class="note">bound = (1+ε)·Lhat + (1+ε)·G with G = √C · Σ√Hcal / √n; '
        f"{_e(note)}. A layer's share of G is √Hcal<sub>i</sub> / Σ√Hcal.</p>",
    ]
    if document.get("clamped_layers"):
        body.append(
            '<p class="note">Negative values counted as 0 for: '
            + ", ".join(f"<code>{_e(n)}</code>" for n in document["clamped_layers"])
            + "</p>"
        )
    shown = _SHOWN | ({"measures"} if isinstance(document.get("measures"), Mapping) else set())
    body.append(fields_section(document, frozenset(shown)))
    return head + "\n".join(part for part in body if part) + "</body></html>\n", png is not None
