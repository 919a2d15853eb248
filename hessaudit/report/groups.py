"""The summary panel's per-group line: the Hessian term G split by module group.

Reads ``hessian_term_by_group`` of an audit document (:mod:`hessaudit.audit.groups`); group
names come from the file, so they are escaped like every other string shown.
"""

from __future__ import annotations

from typing import Any

from hessaudit.report._format import fmt_number as fmt
from hessaudit.report.escape import console_text

__all__ = ["group_rows"]


def group_rows(document: dict[str, Any]) -> list[tuple[str, str]]:
    """``[("G by group", "attention 0.12 · linear 0.034 · predictor 0.5")]`` when the document
    splits G into two or more groups; nothing otherwise."""
    groups = document.get("hessian_term_by_group")
    if not isinstance(groups, dict):
        return []
    parts = [
        f"{console_text(str(name))} {fmt(value)}"
        for name, value in groups.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    return [("G by group", " · ".join(parts))] if len(parts) >= 2 else []
