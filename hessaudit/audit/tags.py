"""``measure --label KEY=VALUE``: free-form tags stored in the audit JSON's ``inputs.tags``.

Labels say what an audit belongs to (``sweep=size``, ``value=200``, ``run=nightly``) so that
``hessaudit correlate --group-by KEY`` can group audits by them. Rules, so that a label can be
used as a grouping key and shown anywhere without surprises:

* KEY: 1 to 64 characters from letters, digits, ``_`` and ``-``, starting with a letter or
  ``_`` (no dots: ``--group-by`` reads dots as a path into ``inputs``);
* VALUE: at most 200 characters, no control characters (it may be empty);
* a KEY at most once.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

from hessaudit.errors import HessauditError

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
MAX_VALUE_CHARS = 200


def _has_control(text: str) -> bool:
    return any(unicodedata.category(char) in ("Cc", "Cf", "Cs") for char in text)


def parse_labels(items: Iterable[str] | None) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` strings (the repeatable ``--label`` flag) as ordered (key, value) pairs."""
    pairs = []
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise HessauditError(
                f"--label {item[:40]!r} is not KEY=VALUE", hint="e.g. --label sweep=size"
            )
        pairs.append((key.strip(), value))
    return check_labels(pairs)


def check_labels(
    labels: Iterable[tuple[str, str]] | Mapping[str, str],
) -> tuple[tuple[str, str], ...]:
    """Validate labels given as pairs or a mapping (the rules of the module docstring)."""
    pairs = list(labels.items()) if isinstance(labels, Mapping) else list(labels)
    seen: set[str] = set()
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise HessauditError("--label needs KEY=VALUE pairs")
        key, value = pair
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            shown = key[:40] if isinstance(key, str) else key
            raise HessauditError(
                f"--label key {shown!r} is not valid",
                hint="1-64 letters, digits, '_' or '-', starting with a letter or '_'",
            )
        if not isinstance(value, str):
            raise HessauditError(f"--label {key}: the value must be a string")
        if len(value) > MAX_VALUE_CHARS or _has_control(value):
            raise HessauditError(
                f"--label {key}: the value must be at most {MAX_VALUE_CHARS} characters "
                "without control characters"
            )
        if key in seen:
            raise HessauditError(f"--label {key} is given twice")
        seen.add(key)
    return tuple((key, value) for key, value in pairs)
