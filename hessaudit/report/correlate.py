"""Rendering of a ``hessaudit.correlate/1`` document: rich tables, CSV, scatter plots, HTML.

Every string that comes from an input file (paths, group values, warnings built from them)
is cleaned with :func:`hessaudit.correlate.core.plain` and then escaped for its medium: rich
``Text`` (never markup) on the terminal, ``html.escape`` in the page, a leading ``'`` for
spreadsheet formulas in CSV cells, ``\\$`` against matplotlib's mathtext in plot labels. The
page has inline CSS and the plots as base64 PNG data URIs: no scripts, no external URLs. The
plots use matplotlib's Agg canvas without pyplot, so no global backend state is touched.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from hessaudit.audit.measures import MEASURE_LABELS
from hessaudit.correlate.core import CSV_COLUMNS
from hessaudit.correlate.read import plain
from hessaudit.report._format import fmt_coefficient as _r
from hessaudit.report._format import fmt_number as fmt
from hessaudit.report._layout import Column, fit_table
from hessaudit.report.console import print_table, stdout, table_width

_MAX_LEGEND_GROUPS = 12


def _with_ci(value: float | None, lo: float | None, hi: float | None, sep: str = " ") -> str:
    if value is None:
        return "-"
    return _r(value) if lo is None or hi is None else f"{_r(value)}{sep}[{_r(lo)}, {_r(hi)}]"


def correlations_table(
    rows: Sequence[Mapping[str, Any]], title: str, width: int | None = None
) -> Table:
    """One row per measure, laid out for ``width`` cells (``None``: as wide as it needs);
    a narrow width puts the intervals and counts on a second line."""

    def cis(name: str, sep: str) -> list[str]:
        return [_with_ci(r[name], r[f"{name}_lo"], r[f"{name}_hi"], sep) for r in rows]

    def ratios(sep: str) -> list[str]:
        return [fmt(r["median_ratio"]) + (f"{sep}(of {r['ratio_n']})" if r["ratio_n"] else "")
                for r in rows]

    columns = [
        Column("measure", "measure", [MEASURE_LABELS.get(r["measure"], "?") for r in rows],
               "left", "prose"),
        Column("n", "n", [str(r["n"]) for r in rows]),
        Column("spearman", "Spearman [95% CI]", cis("spearman", " "),
               forms=[(20, cis("spearman", "\n"))]),
        Column("pearson", "Pearson [95% CI]", cis("pearson", " "),
               forms=[(20, cis("pearson", "\n"))]),
        Column("ratio", "median measure / gap", ratios(" "), forms=[(30, ratios("\n"))]),
    ]
    table, _ = fit_table(columns, width, title=Text(title))
    return table


def print_correlate(document: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or stdout()
    width = table_width(console)
    settings = document["settings"]
    print_table(console, correlations_table(
        document["correlations"],
        f"Correlation with the observed gap over {len(document['audits'])} audits "
        f"(bootstrap {settings['bootstrap']}, seed {settings['seed']})",
        width,
    ))
    for group in document["groups"]:
        title = f"{plain(settings['group_by'], 60)} = {plain(group['group'], 60)}"
        print_table(console, correlations_table(group["rows"], f"{title} ({group['n']} audits)",
                                                width))
    gates = document.get("suggested_gates")
    if gates:
        console.print(Text(gates["toml"].rstrip("\n")))


# --------------------------------------------------------------------------- CSV


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    text = plain(value, 200) if isinstance(value, str) else str(value)
    # Spreadsheets run a cell that starts with one of these as a formula.
    return "'" + text if text[:1] in ("=", "+", "-", "@") and isinstance(value, str) else text


def csv_text(rows: Sequence[Mapping[str, Any]], prefix: Sequence[tuple[str, Any]] = ()) -> str:
    """The rows as CSV with exactly :data:`CSV_COLUMNS` (after the ``prefix`` columns)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([name for name, _ in prefix] + list(CSV_COLUMNS))
    for row in rows:
        writer.writerow([_cell(v) for _, v in prefix] + [_cell(row[c]) for c in CSV_COLUMNS])
    return buffer.getvalue()


def group_csv_text(document: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    for index, group in enumerate(document["groups"]):
        text = csv_text(group["rows"], prefix=[("group", group["group"])])
        buffer.write(text if index == 0 else text.split("\n", 1)[1])
    return buffer.getvalue() or csv_text([], prefix=[("group", "")])


# --------------------------------------------------------------------------- plots


def _mpl_label(value: Any) -> str:
    text = plain(value, 40).replace("\\", "/").replace("$", r"\$")
    return " " + text if text.startswith("_") else text  # "_x" would be hidden from legends


def scatter_png(document: Mapping[str, Any], measure: str) -> bytes | None:
    """Measure against gap for every audit, one colour per group; None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    row = next(r for r in document["correlations"] if r["measure"] == measure)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for audit in document["audits"]:
        value = audit["values"].get(measure)
        if value is not None:
            xs, ys = series.setdefault(str(audit.get("group", "")), ([], []))
            xs.append(audit["gap"])
            ys.append(value)
    figure = Figure(figsize=(5.2, 3.9), dpi=90)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (group, (xs, ys)) in enumerate(series.items()):
        label = _mpl_label(group) if index < _MAX_LEGEND_GROUPS else None
        axes.scatter(xs, ys, s=22, label=label)
    if row["median_ratio"] is not None:
        gaps = [a["gap"] for a in document["audits"] if a["gap"] > 0]
        top = max(gaps) if gaps else 1.0
        axes.plot([0, top], [0, row["median_ratio"] * top], ":", color="gray",
                  label=f"median ratio {row['median_ratio']:.3g}")
    axes.set_xlabel("observed gap (held-out loss - training loss)")
    axes.set_ylabel(_mpl_label(MEASURE_LABELS[measure]))
    axes.set_title(
        f"{_mpl_label(MEASURE_LABELS[measure])}: Spearman {_r(row['spearman'])}, "
        f"Pearson {_r(row['pearson'])}, n {row['n']}", fontsize=9,
    )
    axes.grid(alpha=0.3)
    if len(series) > 1 or row["median_ratio"] is not None:
        group_by = document["settings"].get("group_by")
        axes.legend(fontsize=7, title=None if group_by is None else _mpl_label(group_by),
                    title_fontsize=7)
    figure.subplots_adjust(left=0.15, right=0.97, bottom=0.13, top=0.91)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; color: #1f2328;
       margin: 0 auto; max-width: 1100px; padding: 24px; line-height: 1.45; }
h2 { border-bottom: 1px solid #d1d9e0; padding-bottom: 4px; }
table { border-collapse: collapse; font-size: 0.9em; margin-bottom: 16px; }
th, td { border-bottom: 1px solid #d1d9e0; padding: 4px 8px; text-align: left; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.warn { background: #fff8c5; border: 1px solid #9a6700; border-radius: 8px; padding: 8px 14px; }
figure { display: inline-block; margin: 8px; }
img { max-width: 100%; border: 1px solid #d1d9e0; }
pre { background: #f6f8fa; padding: 8px; }
code { overflow-wrap: anywhere; }
"""


def _e(value: Any, limit: int = 200) -> str:
    return html.escape(plain(value, limit), quote=True)


def _html_table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in (
        "measure", "n", "Spearman", "95% CI", "Pearson", "95% CI", "median measure / gap"))
    body = []
    for row in rows:
        cells = [
            html.escape(MEASURE_LABELS.get(row["measure"], "?")), str(int(row["n"])),
            _r(row["spearman"]), f"[{_r(row['spearman_lo'])}, {_r(row['spearman_hi'])}]",
            _r(row["pearson"]), f"[{_r(row['pearson_lo'])}, {_r(row['pearson_hi'])}]",
            html.escape(fmt(row["median_ratio"])),
        ]
        body.append("<tr>" + "".join(
            f"<td{'' if i == 0 else ' class=num'}>{c}</td>" for i, c in enumerate(cells)
        ) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def correlate_html(document: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """The self-contained page: tables, warnings, suggested gates and the embedded plots."""
    settings = document["settings"]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<title>hessaudit correlate</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Which measure tracks the generalization gap</h1>",
        f"<p>{len(document['audits'])} audits with an observed gap, "
        f"{len(document['skipped'])} skipped; bootstrap {int(settings['bootstrap'])} resamples, "
        f"seed {int(settings['seed'])}, 95% percentile intervals.</p>",
    ]
    if document["warnings"]:
        items = "".join(f"<li>{_e(w, 300)}</li>" for w in document["warnings"])
        parts.append(f"<div class=warn><b>Warnings</b><ul>{items}</ul></div>")
    parts += ["<h2>All audits</h2>", _html_table(document["correlations"])]
    for group in document["groups"]:
        parts.append(f"<h3>{_e(settings['group_by'], 60)} = {_e(group['group'], 80)} "
                     f"({int(group['n'])} audits)</h3>")
        parts.append(_html_table(group["rows"]))
    gates = document.get("suggested_gates")
    if gates:
        parts.append(f"<h2>Suggested gates</h2><pre>{html.escape(gates['toml'])}</pre>")
    if images:
        parts.append("<h2>Measure against gap</h2>")
        for measure, png in images.items():
            data = base64.b64encode(png).decode("ascii")
            label = html.escape(MEASURE_LABELS.get(measure, "?"))
            parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{label}'>"
                         f"<figcaption>{label}</figcaption></figure>")
    parts.append("<h2>Audits</h2><table><tr><th>file</th><th>gap</th><th>G</th>"
                 "<th>group</th><th>bound kind</th></tr>")
    for audit in document["audits"]:
        parts.append(
            f"<tr><td><code>{_e(audit['path'])}</code></td><td class=num>{fmt(audit['gap'])}</td>"
            f"<td class=num>{fmt(audit['values'].get('hessian_term'))}</td>"
            f"<td>{_e(audit.get('group', ''), 80)}</td>"
            f"<td>{_e(audit['bound_kind'] or '-')}</td></tr>"
        )
    parts.append("</table>")
    if document["skipped"]:
        items = "".join(f"<li><code>{_e(s['path'])}</code>: {_e(s['reason'])}</li>"
                        for s in document["skipped"])
        parts.append(f"<h2>Skipped</h2><ul>{items}</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_outputs(document: Mapping[str, Any], out: Path, *, plots: bool = True) -> list[Path]:
    """Write the CSVs, one PNG per measure and the HTML page into ``out``; return the paths.
    Every file is written atomically."""
    from hessaudit._atomic import write_bytes, write_text

    written = []
    path = out / "correlations.csv"
    write_text(path, csv_text(document["correlations"]))
    written.append(path)
    if document["groups"]:
        path = out / "correlations_by_group.csv"
        write_text(path, group_csv_text(document))
        written.append(path)
    images: dict[str, bytes] = {}
    for row in document["correlations"] if plots else ():
        png = scatter_png(document, row["measure"])
        if png is None:
            break
        images[row["measure"]] = png
        path = out / f"scatter_{row['measure']}.png"
        write_bytes(path, png)
        written.append(path)
    path = out / "correlations.html"
    write_text(path, correlate_html(document, images))
    written.append(path)
    return written
