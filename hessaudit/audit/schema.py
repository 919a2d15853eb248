"""The one reader of ``hessaudit.audit/1`` files: ``compare`` and ``report`` see only documents
that passed it.

An audit JSON may come from anywhere (an artifact of another pipeline, a hand edit, a hostile
pull request), so :func:`read_audit_json` checks every field that hessaudit reads against the
declarative table :data:`hessaudit.audit.spec.AUDIT` and raises
:class:`~hessaudit.errors.HessauditError` naming the file and the JSON path of the first bad
field::

    base.json: layers[3].hcal is a string, expected a number

Rules, beyond the table:

* the file is read whole only up to :data:`MAX_BYTES`; it must be UTF-8 JSON (a BOM is allowed);
* standard JSON only: ``NaN``, ``Infinity`` and numbers that overflow to infinity (``1e999``)
  are refused wherever they appear, and so are lone UTF-16 surrogates (``"\\ud800"``), which no
  terminal, markdown or HTML writer can encode;
* no object holds the same key twice (JSON parsers silently keep the last one, so a second
  ``"bound"`` could hide the first), and no two layers share a name;
* nesting is at most :data:`MAX_DEPTH` levels (an audit needs five);
* integers fit in 64 bits, and a number is finite as a float;
* keys the table does not list are allowed (newer versions add keys), subject to the rules above.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from hessaudit.audit.spec import ANY, AUDIT, AUDIT_SCHEMA, Spec
from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import refuse_special_file

__all__ = ["AUDIT_SCHEMA", "MAX_BYTES", "MAX_DEPTH", "read_audit_json"]

#: Largest audit file read: about 25 000 layers. Larger is not an audit written by hessaudit.
MAX_BYTES = 16 * 1024 * 1024
#: Deepest nesting of objects and lists: an audit needs 5 (inputs.data_summary.shape[0]).
MAX_DEPTH = 32
_INT64 = 2**63
_HINT = "give a file written by 'hessaudit measure --json'"


# --------------------------------------------------------------------------- parsing


class _NonFinite:
    """What ``NaN`` / ``Infinity`` / ``-Infinity`` parse to, so that the check can say where."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


class _DuplicateKey:
    """What an object with a repeated key parses to, so that the check can say where."""

    def __init__(self, key: str) -> None:
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _DuplicateKey:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                return _DuplicateKey(key)
            seen.add(key)
    return result


def _show(text: str, limit: int = 60) -> str:
    """A file name, key or layer name as one printable line."""
    shown = text if text.isprintable() else json.dumps(text)[1:-1]
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _read_bytes(path: Path) -> bytes:
    name = _show(str(path), 200)
    # A FIFO with no writer would block the open forever, and a device is no file: inputs are
    # regular files (docs/errors.md, "Hostile files and model code").
    refuse_special_file(path, "audit JSON")
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > MAX_BYTES:
                raise HessauditError(
                    f"{name} is {info.st_size / 2**20:.0f} MiB; an audit JSON is at most "
                    f"{MAX_BYTES // 2**20} MiB",
                    hint=_HINT,
                )
            # A pipe (``<(...)``) or device has no size: read at most one byte too many.
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise HessauditError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise HessauditError(f"{name} is a directory, not an audit JSON file") from None
    except PermissionError:
        raise HessauditError(f"cannot read {name}: permission denied") from None
    except OSError as exc:
        raise HessauditError(f"cannot read {name}: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise HessauditError(
            f"{name} holds more than {MAX_BYTES // 2**20} MiB; an audit JSON is smaller",
            hint=_HINT,
        )
    return data


def read_audit_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read, parse and check a ``hessaudit.audit/1`` file; :class:`HessauditError` otherwise.

    The returned document satisfies :data:`AUDIT` and the rules of the module docstring.
    """
    path = Path(path)
    name = _show(str(path), 200)
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HessauditError(
            f"{name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            hint=_HINT,
        ) from None
    try:
        document = json.loads(text, parse_constant=_NonFinite, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise HessauditError(
            f"{name} is not valid JSON ({exc.msg}: line {exc.lineno}, column {exc.colno})",
            hint=_HINT,
        ) from None
    except RecursionError:
        raise HessauditError(
            f"{name} is nested too deeply to be an audit (more than {MAX_DEPTH} levels)",
            hint=_HINT,
        ) from None
    except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() digits
        why = "a number has too many digits" if "digits" in str(exc) else _show(str(exc), 100)
        raise HessauditError(f"{name} is not valid JSON ({why})", hint=_HINT) from None
    if isinstance(document, _DuplicateKey):
        _check(document, AUDIT, "", name, 0)
    _check_schema(document, name)
    _check(document, AUDIT, "", name, 0)
    _check_unique_layers(document["layers"], name)
    return document


def _check_schema(document: Any, name: str) -> None:
    schema = document.get("schema") if isinstance(document, dict) else None
    if schema != AUDIT_SCHEMA:
        found = f"schema {_show(repr(schema))}" if schema is not None else "no schema field"
        hint = _HINT
        if isinstance(schema, str) and schema.startswith("hessaudit.compare/"):
            hint = "that is a compare result; give the audits it was made from"
        raise HessauditError(f"{name} is not a {AUDIT_SCHEMA} document ({found})", hint=hint)


# --------------------------------------------------------------------------- checking


def _where(path: str) -> str:
    if len(path) > 80:  # e.g. x[0][0][0]... in a deeply nested list
        path = path[:77] + "..."
    return path or "the document"


def _join(path: str, key: str) -> str:
    shown = key if key.replace("_", "").isalnum() and key.isascii() else json.dumps(key)
    shown = _show(shown)
    return f"{path}.{shown}" if path else shown


_NAMES = {
    "null": "null",
    "boolean": "true/false",
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "list": "a list",
    "object": "an object",
}


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def _fail(name: str, path: str, problem: str) -> HessauditError:
    return HessauditError(f"{name}: {_where(path)} {problem}", hint=_HINT)


def _check(value: Any, spec: Spec, path: str, name: str, depth: int) -> None:
    """Raise for the first field of ``value`` (at ``path``) that breaks ``spec`` or the rules."""
    if depth > MAX_DEPTH:
        raise _fail(name, path, f"is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, _NonFinite):
        raise _fail(name, path, f"is {value.literal}; an audit holds finite numbers only")
    if isinstance(value, _DuplicateKey):
        raise _fail(name, path, f"has the key {_show(repr(value.key))} more than once")
    if value is None and (spec.kind == "any" or spec.nullable):
        return
    _check_scalar(value, path, name)
    found = _kind_of(value)
    if spec.kind not in ("any", found) and (spec.kind, found) != ("number", "integer"):
        raise _fail(name, path, f"is {_NAMES[found]}, expected {_NAMES[spec.kind]}")
    if isinstance(value, dict):
        missing = [key for key, sub in spec.fields.items() if sub.required and key not in value]
        if missing:
            where = f"{path} " if path else ""
            raise HessauditError(
                f"{name} is an incomplete audit: {where}missing {', '.join(missing)}", hint=_HINT
            )
        for key, item in value.items():
            if not key.isascii() and _has_surrogate(key):
                raise _fail(name, path, "has a key with an invalid character (a lone surrogate)")
            sub = spec.fields.get(key, ANY)
            if sub is ANY and depth < MAX_DEPTH and _plain_leaf(item):
                continue  # a fast path for huge files: no call per plain value
            _check(item, sub, _join(path, key), name, depth + 1)
    elif isinstance(value, list):
        item_spec = spec.item or ANY
        for index, item in enumerate(value):
            if item_spec is ANY and depth < MAX_DEPTH and _plain_leaf(item):
                continue
            _check(item, item_spec, f"{path}[{index}]", name, depth + 1)


def _plain_leaf(value: Any) -> bool:
    """Whether ``value`` obviously passes every rule: checked without a call to :func:`_check`."""
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    if kind is int:
        return -_INT64 <= value < _INT64
    if kind is str:
        return value.isascii()  # an ASCII string holds no surrogate
    return value is None or kind is bool or (kind in (list, dict) and not value)


def _check_scalar(value: Any, path: str, name: str) -> None:
    """The rules every number and string obeys, whatever field it is in."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(name, path, "overflows to infinity; an audit holds finite numbers only")
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        raise _fail(name, path, "is an integer too large for 64 bits")
    if isinstance(value, str) and _has_surrogate(value):
        raise _fail(name, path, "holds an invalid character (a lone UTF-16 surrogate)")


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_unique_layers(layers: list[dict[str, Any]], name: str) -> None:
    first: dict[str, int] = {}
    for index, layer in enumerate(layers):
        earlier = first.setdefault(layer["name"], index)
        if earlier != index:
            raise _fail(
                name,
                f"layers[{index}].name",
                f"{_show(repr(layer['name']))} repeats layers[{earlier}].name; every layer "
                "appears once in an audit",
            )
