"""What exactly a file held: its path, SHA-256 and size (:class:`FileRecord`), as the audit JSON
records every checkpoint and data file it read."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessaudit._messages import oneline
from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import open_regular

__all__ = ["FileRecord", "file_record", "sha256_file"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileRecord:
    """Where a file is and what exactly it held: path, SHA-256 and size in bytes."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with open_regular(path) as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise HessauditError(f"cannot read {path}: {oneline(exc)}") from None
    return digest.hexdigest()


def file_record(path: str | os.PathLike[str]) -> FileRecord:
    """The :class:`FileRecord` of the file at ``path`` (hashed now)."""
    p = Path(path)
    return FileRecord(path=str(p), sha256=sha256_file(p), size=p.stat().st_size)
