"""Paths of ``hessaudit correlate``: the accepted audits and the output folder.

Kept apart from :mod:`hessaudit.correlate.core` (which only computes) so that the command stays
thin. The rule that matters: no output of ``correlate`` may replace one of its inputs, even
through another name for the same file (a hard link, ``..``): files are compared by device
and inode.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from hessaudit.audit.measures import MEASURE_NAMES
from hessaudit.correlate.read import plain
from hessaudit.errors import HessauditError

#: The files ``correlate --out DIR`` may write into DIR.
OUT_FILES = (
    "correlations.csv",
    "correlations_by_group.csv",
    "correlations.html",
    *(f"scatter_{name}.png" for name in (*MEASURE_NAMES, "bound")),
)
_GLOB_CHARS = frozenset("*?[")


def expand_accepted(items: Sequence[str]) -> list[Path]:
    """``--accepted`` values as files: a glob pattern (``*``, ``?``, ``[``) expands to the
    files it matches (an error when none), a folder to its ``*.json`` files, a file to itself."""
    paths: list[Path] = []
    for item in items:
        if _GLOB_CHARS & set(item):
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            if not matches:
                raise HessauditError(f"--accepted {plain(item, 120)!r} matches no file")
            paths.extend(matches)
        elif Path(item).is_dir():
            found = sorted(p for p in Path(item).glob("*.json") if p.is_file())
            if not found:
                raise HessauditError(f"--accepted {plain(item, 120)}: no *.json file in it")
            paths.extend(found)
        elif Path(item).is_file():
            paths.append(Path(item))
        else:
            raise HessauditError(f"--accepted {plain(item, 120)}: no such file")
    unique: dict[tuple[int, int], Path] = {}
    for path in paths:
        unique.setdefault(_identity(path), path)
    return list(unique.values())


def _identity(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def check_not_inputs(
    out: Path | None, json_path: str | None, inputs: Sequence[Path]
) -> None:
    """Refuse outputs that are one of the input files."""
    taken = {}
    for path in inputs:
        try:
            taken[_identity(path)] = path
        except OSError:
            continue
    targets = [] if out is None else [(out / name, "--out") for name in OUT_FILES]
    if json_path not in (None, "-"):
        targets.append((Path(json_path), "--json"))
    for target, flag in targets:
        try:
            identity = _identity(target)
        except OSError:
            continue
        if identity in taken:
            raise HessauditError(
                f"{flag} would overwrite the input {plain(str(taken[identity]), 200)}",
                hint="write the outputs somewhere else",
            )


def check_out_dir(out: Path) -> None:
    """Check ``--out`` before any work: a writable folder, or a missing one whose parent
    exists (created by :func:`make_out_dir` once there is something to write)."""
    shown = plain(str(out), 200)
    if out.exists() and not out.is_dir():
        raise HessauditError(f"--out {shown} is a file, not a folder")
    folder = out
    if not out.exists():
        folder = out.parent if str(out.parent) else Path(".")
        if not folder.is_dir():
            raise HessauditError(f"--out {shown}: folder {plain(str(folder), 200)} does not exist")
    if not os.access(folder, os.W_OK):
        raise HessauditError(f"--out {shown}: folder {plain(str(folder), 200)} is not writable")


def make_out_dir(out: Path) -> None:
    """Create ``--out`` (not its parents) if it is missing."""
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise HessauditError(
            f"--out {plain(str(out), 200)} cannot be created: {exc.strerror}"
        ) from None
