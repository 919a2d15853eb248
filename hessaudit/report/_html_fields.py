"""HTML for any value of an audit file, for ``hessaudit report``: escaped, numbers in the
reports' one format (:func:`hessaudit.report._format.fmt_number`); the stylesheet wraps long
strings (``overflow-wrap: anywhere``) instead of letting them widen the page.

The report's own sections show what matters most; :func:`fields_section` shows everything else
(all of ``inputs`` and ``settings``, every per-layer field, top-level fields the page has no
section for, fields added to the schema later), so that every number of the JSON is on the page.
:func:`measures_section` shows the ``measures`` object side by side. A file is input: every
string is escaped, a mapping or list nested deeper than :data:`MAX_DEPTH` is shown as ``…``
(no recursion without end), and nothing assumes a field has the type the schema says.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from hessaudit.report._format import fmt_number
from hessaudit.report.escape import visible

#: Nesting shown in full; deeper values are shown as "…".
MAX_DEPTH = 6


def esc(value: Any) -> str:
    """``value`` as HTML text: invisible characters as escapes (:func:`visible`), then escaped."""
    return html.escape(visible(value), quote=True)


def is_number(value: Any) -> bool:
    """An int or float from JSON (bools are not numbers)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def value_html(value: Any, depth: int = 0) -> str:
    """Any JSON value: numbers formatted, strings escaped, ``null`` as ``-``,
    lists of scalars on one wrapping line, mappings and other lists as nested tables."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if is_number(value):
        return f'<span class="n">{esc(fmt_number(value))}</span>'
    if isinstance(value, str):
        return esc(value)
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, Mapping):
        return kv_table(value.items(), depth=depth + 1) if value else "{}"
    if isinstance(value, Sequence):
        if not value:
            return "[]"
        if all(_is_scalar(item) for item in value):
            return "[" + ", ".join(value_html(item, depth + 1) for item in value) + "]"
        return "".join(f"<div>{value_html(item, depth + 1)}</div>" for item in value)
    return esc(value)


def kv_table(items: Any, *, depth: int = 0) -> str:
    """A two-column table of (key, JSON value) pairs; keys escaped."""
    rows = "".join(
        f'<tr><th scope="row" class="key">{esc(key)}</th>'
        f'<td class="val">{value_html(value, depth)}</td></tr>'
        for key, value in items
    )
    return f'<table class="kv">{rows}</table>'


def layer_fields_table(layers: Sequence[Any]) -> str:
    """Every field of every layer: one column per key (in order of first appearance)."""
    keys: dict[str, None] = {}
    for layer in layers:
        if isinstance(layer, Mapping):
            keys.update(dict.fromkeys(str(key) for key in layer))
    head = "".join(f"<th>{esc(key)}</th>" for key in keys)
    rows = []
    for layer in layers:
        record = layer if isinstance(layer, Mapping) else {}
        cells = "".join(
            f'<td class="{"num" if is_number(record.get(key)) else "val"}">'
            f"{value_html(record[key], 1) if key in record else ''}</td>"
            for key in keys
        )
        rows.append(f"<tr>{cells}</tr>")
    return (
        f'<div class="scroll"><table class="fields"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def fields_section(document: Mapping[str, Any], shown: frozenset[str]) -> str:
    """A closed ``<details>`` with ``inputs``, ``settings``, every per-layer field and each
    top-level field not in ``shown`` (the keys the page's own sections already show)."""
    parts = []
    for key, title in (("inputs", "Inputs"), ("settings", "Settings")):
        if key in document:
            parts.append(f'<h3>{title}</h3><div class="scroll">{value_html(document[key])}</div>')
    layers = document.get("layers")
    if isinstance(layers, list) and layers:
        parts.append("<h3>Per-layer fields</h3>" + layer_fields_table(layers))
    rest = [(key, value) for key, value in document.items() if key not in shown]
    if rest:
        parts.append(f'<h3>Other fields</h3><div class="scroll">{kv_table(rest)}</div>')
    return (
        "<details><summary>Every field of the audit file</summary>" + "".join(parts) + "</details>"
    )


def _card(key: str, body: str, extra: str = "") -> str:
    return (
        f'<div class="card"><div class="k"><code>{esc(key)}</code></div>'
        f'<div class="v">{body}</div>{extra}</div>'
    )


def measures_section(measures: Any) -> str:
    """The ``measures`` object side by side: a card per real-valued entry (with its
    ``<name>_stderr`` as ``± se`` when there is one) and per object (its fields listed), then
    one line with the rest (counts, labels, entries that are null: not computed).

    Nothing for an absent, empty or non-object ``measures`` (the page's other fields show it).
    """
    if not isinstance(measures, Mapping) or not measures:
        return ""
    cards, rest = [], []
    for key, value in measures.items():
        key = str(key)
        if key.endswith("_stderr") and is_number(measures.get(key[: -len("_stderr")])):
            continue  # shown as ± on its measure's card
        if isinstance(value, float):
            stderr = measures.get(f"{key}_stderr")
            extra = f" <small>± {esc(fmt_number(stderr))}</small>" if is_number(stderr) else ""
            cards.append(_card(key, esc(fmt_number(value)) + extra))
        elif isinstance(value, Mapping) and value:
            cards.append(_card(key, "", kv_table(value.items(), depth=1)))
        else:
            rest.append(f"<code>{esc(key)}</code> {value_html(value, 1)}")
    line = f'<p class="note">{" · ".join(rest)}</p>' if rest else ""
    return f'<h2>Measures</h2><div class="cards">{"".join(cards)}</div>{line}'
