"""Reading audit files for ``hessaudit correlate``, and making their strings safe to show.

:func:`read_audit` is the one place ``correlate`` reads an audit file (swappable for the
validating reader of ``compare`` and ``report``); :func:`plain` turns any value from a file into
one line of printable text before it goes into a message, a table, a CSV cell or a page (each
renderer then escapes it for its medium).
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hessaudit.errors import HessauditError

AUDIT_SCHEMA = "hessaudit.audit/1"
MAX_FILE_BYTES = 64 * 1024 * 1024


def plain(value: Any, limit: int = 80) -> str:
    """``value`` as one line of printable text: control and format characters (newlines,
    escape sequences, bidi overrides) become ``?``, and long text is cut with an ellipsis."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = "".join(
        "?" if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp") else char
        for char in text[: limit + 1]
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


def show(value: Any) -> str:
    """A setting's value for a message: strings quoted, anything else as JSON, cleaned."""
    return repr(plain(value, 40)) if isinstance(value, str) else plain(value, 40)


def read_audit(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one audit file defensively; :class:`HessauditError` naming the file otherwise.

    The one reader ``correlate`` uses: the validating reader of ``compare`` and ``report``
    (``hessaudit.audit.schema.read_audit_json``) when it is installed, else a minimal one:
    a regular UTF-8 file of at most 64 MiB, standard JSON (no NaN/Infinity, no repeated keys),
    an object whose ``schema`` is ``hessaudit.audit/1``. Every field is still read with type
    checks where it is used (numbers must be finite, objects must be objects).
    """
    try:
        from hessaudit.audit.schema import read_audit_json  # type: ignore[import-not-found]
    except ImportError:
        return _read_audit_minimal(Path(path))
    return read_audit_json(path)


def _read_audit_minimal(path: Path) -> dict[str, Any]:
    name = plain(str(path), 200)
    try:
        if not path.is_file():
            raise HessauditError(f"{name}: no such file" if not path.exists() else
                                 f"{name} is not a regular file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise HessauditError(f"{name} is larger than {MAX_FILE_BYTES >> 20} MiB: not an audit")
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise HessauditError(f"cannot read {name}: {type(exc).__name__}") from None

    def no_constant(token: str) -> None:
        raise ValueError(f"{token} is not standard JSON")

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("an object holds the same key twice")
        return dict(pairs)

    try:
        document = json.loads(text, parse_constant=no_constant, object_pairs_hook=unique)
    except (ValueError, RecursionError) as exc:
        reason = plain(str(exc), 80) if isinstance(exc, ValueError) else "nested too deeply"
        raise HessauditError(
            f"{name} is not valid JSON ({reason})",
            hint="give a file written by 'hessaudit measure --json'",
        ) from None
    schema = document.get("schema") if isinstance(document, dict) else None
    if schema != AUDIT_SCHEMA:
        raise HessauditError(
            f"{name} is not a {AUDIT_SCHEMA} document (schema {show(schema)})",
            hint="give a file written by 'hessaudit measure --json'",
        )
    return document


def expand_inputs(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[Path]]:
    """(files named, files found in folders): a folder stands for the ``*.json`` files directly
    inside it, in name order; a file reached twice counts once. A path that does not exist is
    an error."""
    named: list[Path] = []
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()  # a file given twice (or also inside a folder) counts once
    for item in paths:
        path = Path(item)
        if path.is_dir():
            candidates, into = sorted(p for p in path.glob("*.json") if p.is_file()), found
        elif path.exists():
            candidates, into = [path], named
        else:
            raise HessauditError(f"{plain(str(path), 200)}: no such file or folder")
        for candidate in candidates:
            stat = candidate.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                into.append(candidate)
    return named, found
