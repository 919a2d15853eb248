"""The difference between two audits (``hessaudit compare BASE.json NEW.json``).

:func:`compare_audits` takes two ``hessaudit.audit/1`` documents and returns a
``hessaudit.compare/1`` document::

    schema, tool_version, created
    base, new          {path, created, model, data, finetuned {path, sha256}, success,
                        bound_kind, estimate_reasons}
    warnings           [str]: settings or inputs that differ between the two audits, and a
                       line for each audit whose bound is only an estimate
    summary            {bound, hessian_term, train_loss, eval_loss, gap, ratio_to_gap, C, n}:
                       each {base, new, abs_change, rel_change_pct}
    measures           {name: {base, new, abs_change, rel_change_pct}} for each measure of
                       the audits' ``measures`` (hessaudit.audit.measures.MEASURE_NAMES; the noise
                       stability's mean) that either audit has; recomputed from the layers
                       for an audit written before ``measures`` existed
    layers             [{name, base, new, abs_change, rel_change_pct, base_share, new_share}]
                       for the layers present in both (values are Hcal), in NEW's order
    only_in_base, only_in_new   [{name, hcal}]
    gates, success     as in the audit document; thresholds and observed values in percent

``rel_change_pct`` is ``100 * (new - base) / |base|``; it is 0 when both are 0 and null
(an infinite change) when only the base is 0. A null relative change fails an increase gate.
Each gate record's ``observed_is_estimate`` is true when either audit's ``bound_kind`` is
``"estimate"``; ``bound_kind`` is null for an audit written before that key existed.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from hessaudit._version import __version__
from hessaudit.audit.bound import ESTIMATE, estimate_label
from hessaudit.audit.gates import Gate, layer_shares, matching, no_match_error, worst_of
from hessaudit.audit.measures import document_measures
from hessaudit.audit.schema import AUDIT_SCHEMA as AUDIT_SCHEMA  # re-exported
from hessaudit.audit.schema import read_audit_json
from hessaudit.errors import HessauditError

SCHEMA = "hessaudit.compare/1"
# The summary quantities a comparison reports, with the labels people read.
SUMMARY_LABELS = {
    "bound": "bound",
    "hessian_term": "Hessian term G",
    "train_loss": "training loss",
    "eval_loss": "held-out loss",
    "gap": "observed gap",
    "ratio_to_gap": "G / gap",
    "C": "loss bound C",
    "n": "n",
}
SUMMARY_KEYS = tuple(SUMMARY_LABELS)

# (label, path into the audit document): a difference is worth a warning, since it makes the
# two audits' numbers not directly comparable.
SETTING_CHECKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data", ("inputs", "data")),
    ("eval data", ("inputs", "eval_data")),
    ("reduce", ("settings", "reduce")),
    ("form", ("settings", "form")),
    ("samples", ("inputs", "samples")),
    ("seed", ("inputs", "seed")),
    ("model", ("inputs", "model")),
    ("pretrained checkpoint", ("inputs", "pretrained", "sha256")),
    ("layer selection", ("inputs", "layer_selection")),
    ("dtype", ("inputs", "dtype")),
    ("n", ("n",)),
    ("loss bound source", ("C_source",)),
    ("epsilon", ("epsilon",)),
)


def load_audit(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a ``hessaudit.audit/1`` file; :class:`HessauditError` otherwise.

    See :mod:`hessaudit.audit.schema` for what is checked.
    """
    return read_audit_json(path)


def _get(document: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = document
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def setting_warnings(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per input or setting that differs between the two audits."""
    warnings = []
    for label, path in SETTING_CHECKS:
        a, b = _get(base, path), _get(new, path)
        if a != b:
            warnings.append(f"{label} differs: {_short(a)} (base) vs {_short(b)} (new)")
    return warnings


def bound_kind_warnings(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """A line when the two audits' ``bound_kind`` differ, and one per audit that is an estimate."""
    warnings = []
    a, b = base.get("bound_kind"), new.get("bound_kind")
    if a != b:
        warnings.append(
            f"bound kind differs: {_kind(a)} (base) vs {_kind(b)} (new); "
            "their bounds are not the same quantity"
        )
    for side, document in (("base", base), ("new", new)):
        label = estimate_label(document)
        if label is not None:
            warnings.append(f"the {side} audit's bound is an {label}")
    return warnings


def _kind(value: Any) -> str:
    return "unknown (older audit)" if value is None else _short(value)


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"sha256 {value[:12]}…"
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def change(base: float | None, new: float | None) -> dict[str, float | None]:
    """``{base, new, abs_change, rel_change_pct}``; see the module docstring for the rules."""
    if base is None or new is None:
        return {"base": base, "new": new, "abs_change": None, "rel_change_pct": None}
    diff = new - base
    if base != 0:
        rel: float | None = 100.0 * diff / abs(base)
    else:
        rel = 0.0 if new == 0 else None
    return {"base": base, "new": new, "abs_change": diff, "rel_change_pct": rel}


def _side(document: Mapping[str, Any], path: str | None) -> dict[str, Any]:
    finetuned = _get(document, ("inputs", "finetuned")) or {}
    return {
        "path": path,
        "created": document.get("created"),
        "model": _get(document, ("inputs", "model")),
        "data": _get(document, ("inputs", "data")),
        "finetuned": {"path": finetuned.get("path"), "sha256": finetuned.get("sha256")},
        "success": document.get("success"),
        "bound_kind": document.get("bound_kind"),
        "estimate_reasons": document.get("estimate_reasons"),
    }


def compare_audits(
    base: Mapping[str, Any],
    new: Mapping[str, Any],
    gates: Sequence[Gate] = (),
    *,
    base_path: str | None = None,
    new_path: str | None = None,
) -> dict[str, Any]:
    """The ``hessaudit.compare/1`` document for two audit documents, with ``gates`` evaluated."""
    summary = {key: change(base.get(key), new.get(key)) for key in SUMMARY_KEYS}
    base_layers = {layer["name"]: layer for layer in base["layers"]}
    new_layers = {layer["name"]: layer for layer in new["layers"]}
    base_share = dict(zip(base_layers, layer_shares(base["layers"]), strict=True))
    new_share = dict(zip(new_layers, layer_shares(new["layers"]), strict=True))
    layers = []
    for name, layer in new_layers.items():
        if name in base_layers:
            entry = {"name": name, **change(base_layers[name]["hcal"], layer["hcal"])}
            entry["base_share"] = base_share[name]
            entry["new_share"] = new_share[name]
            layers.append(entry)
    only_in_base = [
        {"name": name, "hcal": layer["hcal"]}
        for name, layer in base_layers.items()
        if name not in new_layers
    ]
    only_in_new = [
        {"name": name, "hcal": layer["hcal"]}
        for name, layer in new_layers.items()
        if name not in base_layers
    ]
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "tool_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "base": _side(base, base_path),
        "new": _side(new, new_path),
        "warnings": setting_warnings(base, new) + bound_kind_warnings(base, new),
        "summary": summary,
        "measures": measure_changes(base, new),
        "layers": layers,
        "only_in_base": only_in_base,
        "only_in_new": only_in_new,
    }
    document["gates"] = evaluate_compare_gates(gates, document)
    document["success"] = all(gate["passed"] for gate in document["gates"])
    return document


def measure_changes(base: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`change` of every measure that either audit has (see the module docstring)."""
    a, b = document_measures(base), document_measures(new)
    return {name: change(a[name], b[name]) for name in a if (a[name], b[name]) != (None, None)}


def evaluate_compare_gates(
    gates: Sequence[Gate], document: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Evaluate ``max-increase`` / ``max-layer-increase`` gates on a compare document."""
    estimate = any(document[side].get("bound_kind") == ESTIMATE for side in ("base", "new"))
    records = []
    for gate in gates:
        if gate.key == "max-increase":
            bound = document["summary"]["bound"]
            rel = bound["rel_change_pct"]
            passed = rel is not None and gate.holds(rel)
            extra = {"unit": "%", "quantity": "bound"}
            if rel is None:
                extra["note"] = "the base bound is 0, so any increase is infinite"
            records.append(gate.record(rel, passed, **extra))
        elif gate.key == "max-layer-increase":
            names = [layer["name"] for layer in document["layers"]]
            matched = matching(names, gate.pattern or "*")
            if not matched:
                raise no_match_error(gate, names, what="layer present in both audits")
            changes = {layer["name"]: layer["rel_change_pct"] for layer in document["layers"]}
            record = worst_of(gate, {name: changes[name] for name in matched})
            record["unit"] = "%"
            record["quantity"] = "hcal"
            records.append(record)
        else:  # pragma: no cover - resolve_gates only yields compare keys here
            raise HessauditError(f"{gate.name} is not a compare gate")
        records[-1]["observed_is_estimate"] = estimate
    return records


def compare_to_json(document: Mapping[str, Any]) -> str:
    return json.dumps(_finite(document), indent=2, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    """Replace non-finite floats by None so that the JSON stays standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
