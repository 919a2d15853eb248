"""CI gates: thresholds on an audit's numbers, from flags and config files.

A gate is one threshold on one quantity. ``hessaudit measure`` evaluates its gates against the
finished ``hessaudit.audit/1`` document, records every one of them in the document's ``gates``
list and exits 2 when one failed; ``hessaudit compare`` does the same with its own gates on the
change between two audits (see :mod:`hessaudit.audit.compare`). docs/gating.md is the user-facing
description; the names below are a contract.

``measure`` gates (flag = config key without the dashes)::

    max-bound         bound                      <= X
    max-hessian-term  Hessian term G             <= X
    max-ratio         G / observed gap           <= X   (needs --eval-data)
    min-ratio         G / observed gap           >= X   (needs --eval-data)
    max-layer-hcal    PATTERN=X: every layer whose name matches the fnmatch glob PATTERN
                      has Hcal <= X (a bare X means every layer, PATTERN "*")
    max-layer-share   PATTERN=F: every matching layer's share of G is <= F (0..1)

``compare`` gates (percent changes from BASE to NEW)::

    max-increase        relative change of the bound, in percent      <= PCT
    max-layer-increase  [PATTERN=]PCT: relative change of the Hcal of every matching layer
                        present in both audits, in percent            <= PCT

Decisions:

* Ratio gates without held-out data are an error (exit 1), caught before the audit runs.
  When the observed gap is not positive the ratio is undefined (``ratio_to_gap`` is null); the
  gate is then evaluated in its division-free form, ``G <= X * gap`` (max) or ``G >= X * gap``
  (min), which is the same test when gap > 0. So with gap <= 0 a ``min-ratio`` gate passes
  (G >= 0 covers any non-positive gap) and a ``max-ratio`` gate fails unless G = 0 = gap.
  The gate's ``observed`` is then null and its ``note`` says why.
* A layer pattern that matches no layer is an error (exit 1): it is almost always a typo.
* A non-finite observed value fails its gate (and is recorded as null).
* Gates on an estimate (``bound_kind`` ``"estimate"``, e.g. ``--samples``) are evaluated like
  any other; each record's ``observed_is_estimate`` says so (docs/gating.md).
* Config: ``[tool.hessaudit.gates]`` / ``[tool.hessaudit.compare]`` in ``./pyproject.toml``,
  or ``[gates]`` / ``[compare]`` at the top of the file given with ``--config`` (which is then
  read instead of ./pyproject.toml; a ``--config`` file named ``pyproject.toml`` is read the
  pyproject way). Unknown keys are errors. A flag replaces the file's value for the same key
  and, for the per-layer tables, for the same pattern; other patterns from the file stay.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import refuse_special_file

# Order here is the order gates appear in the output.
MEASURE_KEYS = (
    "max-bound",
    "max-hessian-term",
    "max-ratio",
    "min-ratio",
    "max-layer-hcal",
    "max-layer-share",
)
COMPARE_KEYS = ("max-increase", "max-layer-increase")
LAYER_KEYS = frozenset({"max-layer-hcal", "max-layer-share", "max-layer-increase"})
RATIO_KEYS = frozenset({"max-ratio", "min-ratio"})
SECTIONS = {"gates": MEASURE_KEYS, "compare": COMPARE_KEYS}

# Quantity of the audit document each scalar measure gate reads.
_SCALAR_FIELDS = {
    "max-bound": "bound",
    "max-hessian-term": "hessian_term",
    "max-ratio": "ratio_to_gap",
    "min-ratio": "ratio_to_gap",
}


@dataclass(frozen=True)
class Gate:
    """One threshold. ``source`` says where it came from: a flag or a config file."""

    key: str
    threshold: float
    pattern: str | None = None
    source: str = "flag"

    @property
    def name(self) -> str:
        # No brackets: rich would read "[pattern]" as markup.
        return self.key if self.pattern is None else f"{self.key}:{self.pattern}"

    @property
    def op(self) -> str:
        return ">=" if self.key.startswith("min-") else "<="

    def holds(self, observed: float) -> bool:
        if not math.isfinite(observed):
            return False
        return observed >= self.threshold if self.op == ">=" else observed <= self.threshold

    def record(self, observed: float | None, passed: bool, **extra: Any) -> dict[str, Any]:
        """The gate's entry in a JSON document (``name``, ``op``, ``threshold``, ...)."""
        if observed is not None and not math.isfinite(observed):
            observed = None
        entry: dict[str, Any] = {
            "name": self.name,
            "op": self.op,
            "threshold": self.threshold,
            "observed": observed,
            "passed": bool(passed),
            "source": self.source,
        }
        if self.pattern is not None:
            entry["pattern"] = self.pattern
        entry.update(extra)
        return entry


# --------------------------------------------------------------------------- config files


def _toml_load(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise HessauditError(
                f"cannot read {path}: reading TOML needs Python 3.11+ or the tomli package",
                hint="pip install tomli",
            ) from None
    refuse_special_file(path)  # a FIFO would block the read forever
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise HessauditError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise HessauditError(f"{path} is not valid TOML: {exc}") from None


def _unknown_key(key: str, known: Iterable[str], where: str) -> HessauditError:
    known = list(known)
    close = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(known)
    return HessauditError(f"unknown key {key!r} in {where}", hint=hint)


def load_config(
    config: str | os.PathLike[str] | None = None, *, cwd: str | os.PathLike[str] | None = None
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Read the gate tables: ``({"gates": {...}, "compare": {...}}, source label)``.

    With ``config`` that file is read (it must exist); otherwise ``pyproject.toml`` in ``cwd``
    (default: the current directory), if there is one. Both sections are validated, whichever
    command reads them, so a typo is reported by the first command that runs.
    """
    if config is not None:
        path = Path(config)
        if not path.is_file():
            what = "is not a file" if path.exists() else "no such file"
            raise HessauditError(f"--config {path}: {what}")
        pyproject = path.name == "pyproject.toml"
    else:
        path = Path(cwd if cwd is not None else ".") / "pyproject.toml"
        if not path.is_file():
            return {"gates": {}, "compare": {}}, None
        pyproject = True
    document = _toml_load(path)
    if pyproject:
        tool = document.get("tool", {})
        table = tool.get("hessaudit", {}) if isinstance(tool, dict) else {}
        if not isinstance(table, dict):
            raise HessauditError(f"[tool.hessaudit] in {path} must be a table")
        prefix = "tool.hessaudit."
        # Other keys of [tool.hessaudit] belong to other commands: only our sections are checked.
        sections = {name: table.get(name, {}) for name in SECTIONS}
    else:
        prefix = ""
        for key in document:
            if key not in SECTIONS:
                raise _unknown_key(key, SECTIONS, str(path))
        sections = {name: document.get(name, {}) for name in SECTIONS}
    source = str(path) if config is not None else "pyproject.toml"
    parsed = {}
    for name, section in sections.items():
        where = f"[{prefix}{name}] of {path}"
        if not isinstance(section, dict):
            raise HessauditError(f"{where} must be a table")
        parsed[name] = _parse_section(section, SECTIONS[name], where)
    return parsed, source


def _parse_section(section: Mapping[str, Any], known: Sequence[str], where: str) -> dict:
    parsed: dict[str, Any] = {}
    for key, value in section.items():
        if key not in known:
            raise _unknown_key(key, known, where)
        if key in LAYER_KEYS:
            if isinstance(value, dict):
                parsed[key] = {
                    str(pattern): _threshold(key, number, f"{key}.{pattern!r} in {where}")
                    for pattern, number in value.items()
                }
            else:
                parsed[key] = {"*": _threshold(key, value, f"{key} in {where}")}
        else:
            parsed[key] = _threshold(key, value, f"{key} in {where}")
    return parsed


def _threshold(key: str, value: Any, where: str) -> float:
    """Validate one threshold: a finite number, in range for its gate."""
    if isinstance(value, dict):
        raise HessauditError(
            f"{where} must be a number, not a table",
            hint='quote patterns that contain dots: { "layer4.*" = 0.5 }',
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HessauditError(f"{where} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise HessauditError(f"{where} must be a finite number, not {value!r}")
    if key in MEASURE_KEYS and number < 0:
        raise HessauditError(f"{where} must not be negative (got {value!r})")
    if key == "max-layer-share" and number > 1:
        raise HessauditError(
            f"{where} is a fraction of the Hessian term, between 0 and 1 (got {value!r})"
        )
    return number


# --------------------------------------------------------------------------- flags


def parse_layer_flag(key: str, text: str) -> tuple[str, float]:
    """``PATTERN=X`` (or a bare ``X``, meaning every layer) from a repeatable flag."""
    pattern, sep, number = text.rpartition("=")
    if not sep:
        pattern, number = "*", text
    pattern = pattern.strip()
    if not pattern:
        raise HessauditError(f"--{key} {text!r}: the pattern before '=' is empty")
    try:
        value = float(number)
    except ValueError:
        raise HessauditError(
            f"--{key} {text!r}: expected PATTERN=NUMBER (e.g. 'layer4.*=0.5') or a number"
        ) from None
    return pattern, _threshold(key, value, f"--{key} {text!r}")


def resolve_gates(
    keys: Sequence[str],
    flags: Mapping[str, Any],
    file_values: Mapping[str, Any],
    file_source: str | None,
) -> list[Gate]:
    """Merge flag values over file values (flags win) into an ordered list of gates.

    ``flags`` maps a key to a number (scalar keys) or to a list of ``PATTERN=X`` strings
    (per-layer keys); ``None`` and empty lists mean "not given".
    """
    gates: list[Gate] = []
    for key in keys:
        flag = flags.get(key)
        if key in LAYER_KEYS:
            merged: dict[str, tuple[float, str]] = {
                pattern: (value, file_source or "config")
                for pattern, value in (file_values.get(key) or {}).items()
            }
            for text in flag or ():
                pattern, value = parse_layer_flag(key, text)
                merged[pattern] = (value, f"--{key}")
            gates.extend(
                Gate(key, value, pattern=pattern, source=source)
                for pattern, (value, source) in merged.items()
            )
        elif flag is not None:
            gates.append(Gate(key, _threshold(key, flag, f"--{key}"), source=f"--{key}"))
        elif key in file_values:
            gates.append(Gate(key, file_values[key], source=file_source or "config"))
    return gates


def measure_gates(
    *,
    max_bound: float | None = None,
    max_hessian_term: float | None = None,
    max_ratio: float | None = None,
    min_ratio: float | None = None,
    max_layer_hcal: Sequence[str] | None = None,
    max_layer_share: Sequence[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> list[Gate]:
    """The gates of ``hessaudit measure``, from its flags and the config file."""
    sections, source = load_config(config, cwd=cwd)
    flags = {
        "max-bound": max_bound,
        "max-hessian-term": max_hessian_term,
        "max-ratio": max_ratio,
        "min-ratio": min_ratio,
        "max-layer-hcal": max_layer_hcal,
        "max-layer-share": max_layer_share,
    }
    return resolve_gates(MEASURE_KEYS, flags, sections["gates"], source)


def compare_gates(
    *,
    max_increase: float | None = None,
    max_layer_increase: Sequence[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> list[Gate]:
    """The gates of ``hessaudit compare``, from its flags and the config file."""
    sections, source = load_config(config, cwd=cwd)
    flags = {"max-increase": max_increase, "max-layer-increase": max_layer_increase}
    return resolve_gates(COMPARE_KEYS, flags, sections["compare"], source)


def check_before_audit(gates: Sequence[Gate], *, eval_data: str | None) -> None:
    """Fail fast, before any Hessian work, on gates the audit could never evaluate."""
    for gate in gates:
        if gate.key in RATIO_KEYS and eval_data is None:
            raise HessauditError(
                f"--{gate.key} (from {gate.source}) needs the observed gap",
                hint="pass held-out data with --eval-data",
            )


def check_outputs(*paths: str | os.PathLike[str] | None) -> None:
    """Check output paths before any work (writable, distinct, at most one '-').

    Kept for callers without flag names; commands call :func:`hessaudit._paths.check_outputs`,
    which also names the flags and refuses outputs that are inputs.
    """
    from hessaudit._paths import check_outputs as guard

    guard({f"output {i}": path for i, path in enumerate(paths, start=1)})


# --------------------------------------------------------------------------- evaluation


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
