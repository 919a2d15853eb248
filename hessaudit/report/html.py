"""A single self-contained HTML page for one audit (``hessaudit report``).

Inline CSS, the per-layer plot embedded as a base64 PNG, no scripts and no external URLs, so
the page can be attached to a CI run, mailed, or opened offline. The plot uses matplotlib
(the ``examples`` extra) through its Agg canvas, without pyplot, so no global backend state is
touched; without matplotlib the page shows the same bars in plain HTML/CSS and says so.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

from hessaudit.bound import estimate_label
from hessaudit.gates import layer_shares
from hessaudit.loss_bound import c_source_label
from hessaudit.report._escape import visible
from hessaudit.report._format import fmt_number as fmt
from hessaudit.report._format import fmt_pair

_CSS = """
:root { --ok: #1a7f37; --bad: #cf222e; --ink: #1f2328; --muted: #59636e; --line: #d1d9e0;
        --bar: #4c72b0; --head: #8172b2; --fail: #c44e52; --bg2: #f6f8fa; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       color: var(--ink); margin: 0 auto; max-width: 1100px; padding: 24px; line-height: 1.45; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 28px 0 8px; border-bottom: 1px solid var(--line);
     padding-bottom: 4px; }
.sub { color: var(--muted); margin: 0 0 16px; }
.verdict { border-radius: 8px; padding: 14px 18px; font-size: 1.15em; margin: 16px 0; }
.verdict.pass { background: #dafbe1; border: 1px solid var(--ok); }
.verdict.fail { background: #ffebe9; border: 1px solid var(--bad); }
.verdict b { font-size: 1.2em; }
.verdict ul { margin: 6px 0 0; font-size: 0.9em; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 24px; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left;
         vertical-align: middle; }
th { background: var(--bg2); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.key { color: var(--muted); white-space: nowrap; }
td.share { white-space: nowrap; font-variant-numeric: tabular-nums; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.92em;
       overflow-wrap: anywhere; }
.pass-cell { color: var(--ok); font-weight: 600; }
.fail-cell { color: var(--bad); font-weight: 700; }
.tag { font-size: 0.75em; border-radius: 4px; padding: 0 4px; margin-left: 4px; color: #fff; }
.tag.head { background: var(--head); }
.tag.fail { background: var(--fail); }
.tag.est { background: #9a6700; }
.estimate { background: #fff8c5; border: 1px solid #9a6700; border-radius: 8px;
            padding: 8px 14px; }
.bar { display: inline-block; width: 140px; height: 10px; background: var(--bg2);
       border: 1px solid var(--line); vertical-align: middle; margin-right: 6px; }
.bar > span { display: block; height: 100%; background: var(--bar); }
.bar.failing > span { background: var(--fail); }
.note { color: var(--muted); font-size: 0.85em; }
.plot img { max-width: 100%; height: auto; border: 1px solid var(--line); }
.bound { font-size: 1.25em; font-weight: 700; }
"""


def _e(value: Any) -> str:
    return html.escape(visible(value), quote=True)


def _failing_layers(gates: Sequence[Mapping[str, Any]]) -> set[str]:
    return {name for gate in gates if not gate["passed"] for name in gate.get("failing_layers", [])}


def plot_png(document: Mapping[str, Any], *, highlight: set[str] | None = None) -> bytes | None:
    """The per-layer bar chart (Hcal, and share of G) as PNG bytes; None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        return None
    layers = list(document["layers"])
    if not layers:
        return None
    highlight = highlight or set()
    names = [layer["name"] for layer in layers]
    # Tick labels are plain text: no mathtext ('$x^2$' in a name), shown with visible escapes.
    labels = [visible(name) for name in names]
    hcal = [max(float(layer["hcal"]), 0.0) for layer in layers]
    shares = [100 * share for share in layer_shares(layers)]
    colors = [
        "#c44e52" if name in highlight else "#8172b2" if layer.get("is_new_head") else "#4c72b0"
        for name, layer in zip(names, layers, strict=True)
    ]
    height = max(2.4, 0.3 * len(layers) + 1.3)
    figure = Figure(figsize=(11, height), dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, sharey=True)
    positions = list(range(len(layers)))
    left.barh(positions, hcal, color=colors)
    positive = [h for h in hcal if h > 0]
    if positive and min(hcal) > 0 and max(positive) / min(positive) > 100:
        left.set_xscale("log")
        left.set_xlabel("Hcal (log scale)")
    else:
        left.set_xlabel("Hcal")
    left.set_title("Hessian distance per layer", fontsize=11, loc="left")
    right.barh(positions, shares, color=colors)
    right.set_xlabel("share of the Hessian term G (%)")
    right.set_title("share of G = √Hcal / Σ√Hcal", fontsize=11, loc="left")
    right.set_xlim(0, max(max(shares) * 1.15, 1.0))
    for position, share in zip(positions, shares, strict=True):
        right.text(share, position, f" {share:.1f}%", va="center", fontsize=8)
    left.set_yticks(positions, labels, fontsize=8, parse_math=False, usetex=False)
    left.invert_yaxis()
    for axis in (left, right):
        axis.grid(axis="x", alpha=0.3)
        axis.set_axisbelow(True)
        for side in ("top", "right"):
            axis.spines[side].set_visible(False)
    legend = []
    if any(layer.get("is_new_head") for layer in layers):
        legend.append(Patch(color="#8172b2", label="new head (distance from zero)"))
    if highlight:
        legend.append(Patch(color="#c44e52", label="fails a gate"))
    if legend:
        # Below the axes, so that it never covers a bar.
        figure.legend(
            handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False
        )
        figure.tight_layout(rect=(0, 0.35 / height, 1, 1))
    else:
        figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _css_bar(fraction: float, *, failing: bool = False) -> str:
    width = max(0.0, min(1.0, fraction)) * 100
    cls = "bar failing" if failing else "bar"
    return f'<span class="{cls}"><span style="width:{width:.1f}%"></span></span>'


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(
        f'<tr><td class="key">{_e(k)}</td><td class="num">{v}</td></tr>' for k, v in rows
    )
    return f"<table>{body}</table>"


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


def _gates_section(gates: Sequence[Mapping[str, Any]]) -> str:
    if not gates:
        return ""
    rows = "".join(
        "<tr>"
        f"<td><code>{_e(g['name'])}</code></td>"
        f'<td class="num">{_e(fmt_pair(g["observed"], g["threshold"])[0])}'
        + (' <span class="tag est">estimate</span>' if g.get("observed_is_estimate") else "")
        + "</td>"
        f'<td class="num">{_e(g["op"])} {_e(fmt_pair(g["observed"], g["threshold"])[1])}</td>'
        f"<td>{'<code>' + _e(g['worst_layer']) + '</code>' if g.get('worst_layer') else ''}</td>"
        f"<td>{_e(g.get('source', ''))}</td>"
        + ('<td class="pass-cell">pass</td>' if g["passed"] else '<td class="fail-cell">FAIL</td>')
        + "</tr>"
        for g in gates
    )
    notes = "".join(
        f"<li><code>{_e(g['name'])}</code>: {_e(g['note'])}</li>" for g in gates if g.get("note")
    )
    return (
        "<h2>Gates</h2><table><tr><th>gate</th><th>observed</th><th>threshold</th>"
        f"<th>worst layer</th><th>from</th><th>result</th></tr>{rows}</table>"
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
    return rows


def _input_rows(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    inputs = document.get("inputs") or {}
    settings = document.get("settings") or {}

    def checkpoint(key: str) -> str:
        record = inputs.get(key) or {}
        sha = record.get("sha256") or ""
        short = f" <span class='note'>sha256 {_e(sha[:12])}</span>" if sha else ""
        return f"<code>{_e(record.get('path', '-'))}</code>{short}"

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


def _layers_section(document: Mapping[str, Any], failing: set[str], *, hcal_bars: bool) -> str:
    layers = list(document["layers"])
    shares = layer_shares(layers)
    top = max((max(float(layer["hcal"]), 0.0) for layer in layers), default=0.0)
    rows = []
    for layer, share in zip(layers, shares, strict=True):
        name = f"<code>{_e(layer['name'])}</code>"
        if layer.get("is_new_head"):
            name += '<span class="tag head">new head</span>'
        if layer["name"] in failing:
            name += '<span class="tag fail">fails a gate</span>'
        bad = layer["name"] in failing
        hcal = _e(fmt(layer["hcal"]))
        if hcal_bars:
            fraction = max(float(layer["hcal"]), 0.0) / top if top > 0 else 0.0
            hcal = _css_bar(fraction, failing=bad) + hcal
        rows.append(
            "<tr>"
            f"<td>{name}</td>"
            f'<td class="num">{layer.get("numel", 0):,}</td>'
            f'<td class="num">{_e(fmt(layer.get("dist_fro")))}</td>'
            f'<td class="num">{hcal}</td>'
            f'<td class="share">{_css_bar(share, failing=bad)}{100 * share:.1f}%</td>'
            f'<td class="num">{_e(fmt(layer.get("top_eig")))}</td>'
            "</tr>"
        )
    return (
        f"<h2>Per-layer Hessian distance ({len(layers)} layers)</h2>"
        "<table><tr><th>layer</th><th>params</th><th>‖v‖</th><th>Hcal</th>"
        "<th>share of G</th><th>top eig</th></tr>" + "".join(rows) + "</table>"
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
    inputs = document.get("inputs") or {}
    finetuned = (inputs.get("finetuned") or {}).get("path", "")
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
    settings = document.get("settings") or {}
    head = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
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
        + _kv_table(_input_rows(document))
        + "</div></div>",
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
    return head + "\n".join(part for part in body if part) + "</body></html>\n", png is not None
