"""Which measure tracks the generalization gap on *your* checkpoints (``hessaudit correlate``).

Input: audit JSONs (``hessaudit.audit/1``) of several fine-tuned checkpoints, each with an
observed gap (``measure --eval-data``). For every measure of the audits' ``measures`` object
(:data:`hessaudit.audit.measures.MEASURE_NAMES`) and for the ``bound``, :func:`correlate_audits`
reports over the audits that have both the measure and a gap: n, the Spearman and Pearson
correlation of the measure with the gap, their seeded percentile-bootstrap intervals
(:mod:`hessaudit.correlate._stats`), and the median of measure / gap over the audits whose gap is
positive (the paper's "same scale" claim: its Figure 1 shows G at about 1.3-1.5x the gap).
With ``group_by`` the same rows are computed within each group. The result is a
``hessaudit.correlate/1`` document (docs/correlate.md lists its keys).

An audit written before ``measures`` existed still counts: its layer-based measures are
recomputed from its ``layers`` (:func:`hessaudit.audit.measures.layer_measures`).

Gate calibration (:func:`suggest_gates`): from audits the user accepts, each threshold is the
largest accepted value times ``margin``, rounded **up** to 3 significant digits, so every
accepted audit passes it.

Every string that comes from a file (paths, group values, settings) is passed through
:func:`plain` before it is put into a message; renderers escape it again for their medium.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

from hessaudit._version import __version__
from hessaudit.audit.measures import MEASURE_LABELS, MEASURE_NAMES, document_measures
from hessaudit.correlate._stats import MAX_BOOTSTRAP, correlate_pair, median_ratio
from hessaudit.correlate.read import plain, read_audit
from hessaudit.correlate.read import show as _show
from hessaudit.errors import HessauditError

SCHEMA = "hessaudit.correlate/1"
ROWS = (*MEASURE_NAMES, "bound")
CSV_COLUMNS = (
    "measure", "n", "spearman", "spearman_lo", "spearman_hi",
    "pearson", "pearson_lo", "pearson_hi", "median_ratio",
)
MIN_AUDITS = 3
DEFAULT_MARGIN = 1.1
# Settings that make audits' numbers not directly comparable: (label, path in the document).
SETTING_CHECKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reduce", ("settings", "reduce")),
    ("form", ("settings", "form")),
    ("recipe", ("settings", "recipe")),
    ("layer selection", ("inputs", "layer_selection")),
    ("C source", ("C_source",)),
    ("model", ("inputs", "model")),
    ("pretrained checkpoint", ("inputs", "pretrained", "sha256")),
    ("held-out data", ("inputs", "eval_data")),
    ("dtype", ("inputs", "dtype")),
    ("noise-stability eps", ("measures", "noise_stability", "eps")),
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _get(document: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(document, Mapping) or key not in document:
            return None
        document = document[key]
    return document


@dataclass(frozen=True)
class Point:
    """One usable audit: its file, gap and measure values."""

    path: str
    gap: float
    values: dict[str, float | None]
    document: dict[str, Any]


def audit_values(document: Mapping[str, Any]) -> dict[str, float | None]:
    """Every row's value for one audit (None where missing or not a finite number)."""
    values = document_measures(document)
    values["bound"] = _number(document.get("bound"))
    return values


def load_points(
    named: Sequence[Path], found: Sequence[Path]
) -> tuple[list[Point], list[dict[str, str]]]:
    """Usable audits and the skipped files with a reason. A named file that is not an audit
    is an error; a file found in a folder that is not one is skipped."""
    points, skipped = [], []
    for path, from_folder in [(p, False) for p in named] + [(p, True) for p in found]:
        try:
            document = read_audit(path)
        except HessauditError as exc:
            if not from_folder:
                raise
            skipped.append({"path": str(path), "reason": f"not an audit ({plain(str(exc), 120)})"})
            continue
        gap = _number(document.get("gap"))
        if gap is None:
            skipped.append({"path": str(path), "reason": "no observed gap (no --eval-data)"})
            continue
        points.append(Point(str(path), gap, audit_values(document), document))
    return points, skipped


# --------------------------------------------------------------------------- analysis


def setting_warnings(documents: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per setting on which the audits differ (see :data:`SETTING_CHECKS`)."""
    warnings = []
    checks = [(label, lambda d, p=path: _get(d, p)) for label, path in SETTING_CHECKS]
    checks.insert(4, ("layer set", _layer_set))
    for label, read in checks:
        counts: dict[str, int] = {}
        for document in documents:
            key = json.dumps(read(document), sort_keys=True, default=str)
            counts[key] = counts.get(key, 0) + 1
        if len(counts) > 1:
            shown = ", ".join(
                f"{_show(json.loads(key))} ({count})" for key, count in list(counts.items())[:4]
            )
            more = f" and {len(counts) - 4} more" if len(counts) > 4 else ""
            warnings.append(f"the audits differ in {label}: {shown}{more}")
    digests = [_get(d, ("inputs", "finetuned", "sha256")) for d in documents]
    digests = [d for d in digests if isinstance(d, str)]
    repeated = len(digests) - len(set(digests))
    if repeated:
        warnings.append(
            f"{repeated} audit(s) repeat a fine-tuned checkpoint of another (same sha256): the "
            "pooled rows count those checkpoints more than once; see the --group-by rows"
        )
    return warnings


def _layer_set(document: Mapping[str, Any]) -> Any:
    layers = document.get("layers")
    if not isinstance(layers, list):
        return None
    names = [str(layer.get("name")) for layer in layers if isinstance(layer, Mapping)]
    digest = hashlib.sha256("\n".join(sorted(names)).encode("utf-8", "replace")).hexdigest()
    return f"{len(names)} layers (set {digest[:8]})"


def check_group_key(key: str) -> str:
    """Validate ``--group-by``: 1-200 printable characters."""
    if not key or len(key) > 200 or plain(key, 200) != key or key.strip() != key:
        raise HessauditError("--group-by needs a key such as 'sweep' or 'data' (printable text)")
    return key


def group_value(document: Mapping[str, Any], key: str) -> str | None:
    """The group of an audit: ``inputs.tags[key]`` (a ``--label``), else the dotted path
    ``key`` in ``inputs`` (a leading ``inputs.`` is optional), else in the whole document
    (``settings.reduce``, ``C_source``). None when the audit has no such field."""
    labels = _get(document, ("inputs", "tags"))
    if isinstance(labels, Mapping) and isinstance(labels.get(key), str):
        return labels[key]
    path = key.split(".")
    if path[0] in ("tags", "label") and len(path) == 2 and isinstance(labels, Mapping):
        value = labels.get(path[1])
        return value if isinstance(value, str) else None
    for root in (("inputs",), ()):
        value = _get(document, (*root, *(path[1:] if path[0] == "inputs" else path)))
        if value is not None:
            return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return None


def correlation_rows(
    points: Sequence[Point], *, bootstrap: int, seed: int
) -> list[dict[str, Any]]:
    """One row per measure present in at least one of ``points`` (see the module docstring)."""
    rows = []
    for name in ROWS:
        pairs = [(p.values[name], p.gap) for p in points if p.values.get(name) is not None]
        if not pairs:
            continue
        xs, gaps = [x for x, _ in pairs], [g for _, g in pairs]
        stats = correlate_pair(xs, gaps, bootstrap=bootstrap, seed=seed).to_dict()
        ratio, ratio_n = median_ratio(xs, gaps)
        rows.append({"measure": name, "label": MEASURE_LABELS[name], **stats,
                     "median_ratio": ratio, "ratio_n": ratio_n})
    return rows


def _round_up(value: float, digits: int = 3) -> float:
    """``value`` rounded up to ``digits`` significant digits (exact decimal arithmetic)."""
    if value <= 0:
        return 0.0
    exact = Decimal(repr(float(value)))
    step = Decimal(1).scaleb(exact.adjusted() - digits + 1)
    return float(exact.quantize(step, rounding=ROUND_CEILING))


def check_margin(margin: float) -> float:
    """``--margin``: finite and at least 1, so that every accepted audit passes its gate."""
    if not (math.isfinite(margin) and margin >= 1):
        raise HessauditError(f"--margin must be a finite number of at least 1, not {margin!r}")
    return margin


def suggest_gates(
    accepted: Sequence[Mapping[str, Any]], *, margin: float = DEFAULT_MARGIN
) -> dict[str, Any]:
    """``max-hessian-term`` and ``max-bound`` thresholds from accepted audits (module
    docstring), with the TOML snippet for ``[tool.hessaudit.gates]``."""
    check_margin(margin)
    gates: dict[str, Any] = {}
    for gate, key in (("max-hessian-term", "hessian_term"), ("max-bound", "bound")):
        values = [_number(document.get(key)) for document in accepted]
        values = [v for v in values if v is not None]
        if values:
            largest = max(values)
            gates[gate] = {"threshold": _round_up(largest * margin), "largest_accepted": largest,
                           "audits": len(values)}
    if not gates:
        raise HessauditError("--accepted: no accepted audit has a hessian_term or bound")
    estimates = sum(1 for d in accepted if d.get("bound_kind") == "estimate")
    lines = [
        f"# hessaudit correlate --suggest-gate: the largest value over {len(accepted)} accepted "
        f"audit(s) x margin {margin:g},",
        "# rounded up to 3 significant digits (docs/correlate.md). In a --config file, use "
        "[gates] instead.",
    ]
    if estimates:
        lines.append(f"# note: {estimates} of the accepted audits are estimates (bound_kind)")
    lines.append("[tool.hessaudit.gates]")
    for gate, entry in gates.items():
        lines.append(f"{gate} = {entry['threshold']!r}  # largest accepted: "
                     f"{entry['largest_accepted']:.6g}")
    return {"rule": f"largest accepted value x {margin:g}, rounded up to 3 significant digits",
            "margin": margin, "accepted": len(accepted), "accepted_estimates": estimates,
            "gates": gates, "toml": "\n".join(lines) + "\n"}


def check_bootstrap(bootstrap: int, seed: int) -> None:
    """``--bootstrap`` in [0, MAX_BOOTSTRAP] and ``--seed`` in [0, 2^64)."""
    if not 0 <= bootstrap <= MAX_BOOTSTRAP:
        raise HessauditError(f"--bootstrap must be between 0 and {MAX_BOOTSTRAP}, not {bootstrap}")
    if not 0 <= seed < 2**64:
        raise HessauditError(f"--seed must be between 0 and 2^64 - 1, not {seed}")


def correlate_audits(
    points: Sequence[Point],
    *,
    skipped: Sequence[Mapping[str, str]] = (),
    group_by: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``hessaudit.correlate/1`` document for usable audits ``points``."""
    check_bootstrap(bootstrap, seed)
    if len(points) < MIN_AUDITS:
        raise HessauditError(
            f"correlate needs at least {MIN_AUDITS} audits with an observed gap, got "
            f"{len(points)} ({len(skipped)} skipped)",
            hint="audit each checkpoint with 'hessaudit measure --eval-data'",
        )
    groups = []
    labels: list[str | None] = [None] * len(points)
    if group_by is not None:
        members: dict[str, list[Point]] = {}
        for index, point in enumerate(points):
            value = group_value(point.document, group_by)
            labels[index] = "(missing)" if value is None else value
            members.setdefault(labels[index], []).append(point)
        if list(members) == ["(missing)"]:
            raise HessauditError(
                f"--group-by {plain(group_by, 60)!r}: no audit has that label or field",
                hint="give a --label KEY of 'measure', or a field of inputs such as 'data'",
            )
        for value, group in members.items():
            groups.append({"group": value, "n": len(group), "paths": [p.path for p in group],
                           "rows": correlation_rows(group, bootstrap=bootstrap, seed=seed)})
    kinds = [p.document.get("bound_kind") for p in points]
    warnings = setting_warnings([p.document for p in points])
    if kinds.count("estimate"):
        warnings.append(f"{kinds.count('estimate')} of the {len(points)} audits' bounds are "
                        "estimates (bound_kind)")
    return {
        "schema": SCHEMA,
        "tool_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"bootstrap": bootstrap, "seed": seed, "confidence": 0.95,
                     "group_by": group_by, "min_audits": MIN_AUDITS},
        "audits": [
            {"path": p.path, "gap": p.gap, "bound_kind": p.document.get("bound_kind"),
             "values": p.values, **({} if label is None else {"group": label})}
            for p, label in zip(points, labels, strict=True)
        ],
        "skipped": list(skipped),
        "warnings": warnings,
        "correlations": correlation_rows(points, bootstrap=bootstrap, seed=seed),
        "groups": groups,
        "suggested_gates": None,
    }


def to_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, allow_nan=False) + "\n"
