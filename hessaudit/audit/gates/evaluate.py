"""Evaluating gates: before the audit (gates it could never evaluate), and on its document.

Decisions (docs/gating.md):

* Ratio gates without held-out data are an error (exit 1), caught before the audit runs.
  When the observed gap is not positive the ratio is undefined (``ratio_to_gap`` is null); the
  gate is then evaluated in its division-free form, ``G <= X * gap`` (max) or ``G >= X * gap``
  (min), which is the same test when gap > 0. So with gap <= 0 a ``min-ratio`` gate passes
  (G >= 0 covers any non-positive gap) and a ``max-ratio`` gate fails unless G = 0 = gap.
  The gate's ``observed`` is then null and its ``note`` says why.
* A layer pattern that matches no layer is an error (exit 1): it is almost always a typo.
* A non-finite observed value fails its gate (and is recorded as null).
* Gates on an estimate (``bound_kind`` ``"estimate"``, e.g. ``--samples``) are evaluated like
  any other; each record's ``observed_is_estimate`` says so.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hessaudit.audit.gates.gate import LAYER_KEYS, RATIO_KEYS, Gate
from hessaudit.errors import HessauditError

__all__ = [
    "check_before_audit",
    "check_layer_gates",
    "evaluate",
    "failed",
    "layer_shares",
    "matching",
    "no_match_error",
    "worst_of",
]

# Quantity of the audit document each scalar measure gate reads.
_SCALAR_FIELDS = {
    "max-bound": "bound",
    "max-hessian-term": "hessian_term",
    "max-ratio": "ratio_to_gap",
    "min-ratio": "ratio_to_gap",
}
# Layer names shown in an error.
_SHOW = 8


# --------------------------------------------------------------------------- before the audit


def check_before_audit(gates: Sequence[Gate], *, eval_data: str | None) -> None:
    """Fail fast, before any Hessian work, on gates the audit could never evaluate."""
    for gate in gates:
        if gate.key in RATIO_KEYS and eval_data is None:
            raise HessauditError(
                f"--{gate.key} (from {gate.source}) needs the observed gap",
                hint="pass held-out data with --eval-data",
            )


def check_layer_gates(gates: Iterable[Gate], layer_names: Sequence[str]) -> None:
    """Refuse a per-layer gate whose pattern matches none of ``layer_names`` (the layers the
    audit is about to measure), naming the flag or file it came from and a few layer names."""
    names = list(layer_names)
    for gate in gates:
        if gate.key not in LAYER_KEYS or gate.pattern is None:
            continue
        if matching(names, gate.pattern):
            continue
        where = f"--{gate.key}"
        if not gate.source.startswith("--"):
            where += f" (from {gate.source})"
        shown = ", ".join(names[:_SHOW])
        if len(names) > _SHOW:
            shown += f", ... ({len(names)} in all)"
        raise HessauditError(
            f"{where} {gate.pattern}={gate.threshold:g}: the pattern {gate.pattern!r} matches "
            "no layer that the audit measures",
            hint=f"measured layers: {shown}" if names else "the audit measures no layer",
        )


# --------------------------------------------------------------------------- on the document


def matching(names: Sequence[str], pattern: str) -> list[str]:
    """Names matching an fnmatch glob (case-sensitive, ``*`` also crosses dots)."""
    return [name for name in names if fnmatch.fnmatchcase(name, pattern)]


def no_match_error(gate: Gate, names: Sequence[str], what: str = "layer") -> HessauditError:
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return HessauditError(
        f"{gate.name} (from {gate.source}): pattern {gate.pattern!r} matches no {what}",
        hint=f"layers: {shown}" if names else "the audit has no layers",
    )


def layer_shares(layers: Sequence[Mapping[str, Any]]) -> list[float]:
    """Each layer's share of sum_i sqrt(max(hcal_i, 0)), i.e. of the Hessian term G."""
    roots = [math.sqrt(max(float(layer["hcal"]), 0.0)) for layer in layers]
    total = sum(roots)
    return [root / total if total > 0 else 0.0 for root in roots]


def evaluate(gates: Sequence[Gate], document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Evaluate ``measure`` gates against a ``hessaudit.audit/1`` document.

    Returns the ``gates`` entries, in order. Raises :class:`HessauditError` for a gate that
    cannot be evaluated at all (a ratio gate without held-out data, a pattern matching nothing).
    Every entry has ``observed_is_estimate``: true when the audit's ``bound_kind`` is
    ``"estimate"`` (every measure gate reads Hcal, G or the bound, all of which are then
    estimates of the theorem's quantities).
    """
    estimate = document.get("bound_kind") == "estimate"
    return [{**_evaluate_one(gate, document), "observed_is_estimate": estimate} for gate in gates]


def _evaluate_one(gate: Gate, document: Mapping[str, Any]) -> dict[str, Any]:
    if gate.key in LAYER_KEYS:
        return _evaluate_layers(gate, document)
    if gate.key in RATIO_KEYS:
        if document.get("eval_loss") is None:
            raise HessauditError(
                f"{gate.name} (from {gate.source}) needs the observed gap, and the audit has "
                "no held-out loss",
                hint="pass held-out data with --eval-data",
            )
        ratio = document.get("ratio_to_gap")
        if ratio is None:
            term, gap = float(document["hessian_term"]), float(document["gap"])
            bar = gate.threshold * gap
            passed = term >= bar if gate.op == ">=" else term <= bar
            return gate.record(
                None,
                passed,
                note=(
                    f"observed gap {gap:.4g} <= 0, so G / gap is undefined; tested "
                    f"G {gate.op} {gate.threshold:g} * gap instead"
                ),
            )
        return gate.record(float(ratio), gate.holds(float(ratio)))
    value = document.get(_SCALAR_FIELDS[gate.key])
    if value is None:
        raise HessauditError(f"{gate.name}: the audit has no {_SCALAR_FIELDS[gate.key]}")
    return gate.record(float(value), gate.holds(float(value)))


def _evaluate_layers(gate: Gate, document: Mapping[str, Any]) -> dict[str, Any]:
    layers = list(document["layers"])
    names = [layer["name"] for layer in layers]
    if gate.key == "max-layer-share":
        values = dict(zip(names, layer_shares(layers), strict=True))
    else:
        values = {layer["name"]: float(layer["hcal"]) for layer in layers}
    matched = matching(names, gate.pattern or "*")
    if not matched:
        raise no_match_error(gate, names)
    return worst_of(gate, {name: values[name] for name in matched})


def worst_of(gate: Gate, values: Mapping[str, float | None]) -> dict[str, Any]:
    """A per-layer gate's record: passes when every layer does; ``observed`` is the worst one.

    A value of ``None`` stands for +infinity (e.g. a relative change from 0) and fails.
    """

    def badness(item: tuple[str, float | None]) -> float:
        value = item[1]
        if value is None or not math.isfinite(value):
            return math.inf
        return value if gate.op == "<=" else -value

    failing = [name for name, value in values.items() if value is None or not gate.holds(value)]
    worst_name, worst_value = max(values.items(), key=badness)
    return gate.record(
        worst_value,
        not failing,
        layers_matched=len(values),
        worst_layer=worst_name,
        failing_layers=failing,
    )


def failed(gates: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [gate for gate in gates if not gate["passed"]]
