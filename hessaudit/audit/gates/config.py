"""Gates from config files and flags: ``[gates]`` / ``[compare]`` tables and ``--max-*`` flags.

Config: ``[tool.hessaudit.gates]`` / ``[tool.hessaudit.compare]`` in ``./pyproject.toml``, or
``[gates]`` / ``[compare]`` at the top of the file given with ``--config`` (which is then read
instead of ./pyproject.toml; a ``--config`` file named ``pyproject.toml`` is read the pyproject
way). Unknown keys are errors. A flag replaces the file's value for the same key and, for the
per-layer tables, for the same pattern; other patterns from the file stay.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hessaudit.audit.gates.gate import (
    COMPARE_KEYS,
    LAYER_KEYS,
    MEASURE_KEYS,
    SECTIONS,
    Gate,
    check_threshold,
)
from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import refuse_special_file

__all__ = ["compare_gates", "load_config", "measure_gates", "parse_layer_flag", "resolve_gates"]


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
                    str(pattern): check_threshold(key, number, f"{key}.{pattern!r} in {where}")
                    for pattern, number in value.items()
                }
            else:
                parsed[key] = {"*": check_threshold(key, value, f"{key} in {where}")}
        else:
            parsed[key] = check_threshold(key, value, f"{key} in {where}")
    return parsed


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
    return pattern, check_threshold(key, value, f"--{key} {text!r}")


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
            gates.append(Gate(key, check_threshold(key, flag, f"--{key}"), source=f"--{key}"))
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
