"""Files of a Hugging Face directory: read only regular files inside it, JSON with a size cap.

Shared by :mod:`hessaudit.inputs.hf_checkpoints` (model directories), :mod:`.hf_models`
(``config.json``) and :mod:`.lora` (adapter directories). A file is read only when it is a
plain name inside the directory: no ``/``, no ``..``, and a symbolic link must resolve inside
the directory, except the Hugging Face cache's own layout (``snapshots/REV/NAME`` linking to
``../../blobs/HASH`` of the same repository).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hessaudit._messages import oneline
from hessaudit.errors import HessauditError
from hessaudit.inputs.guard import open_regular

__all__ = [
    "ADAPTER_CONFIG",
    "MAX_JSON_BYTES",
    "MODEL_CONFIG",
    "dir_member",
    "files_record",
    "is_adapter_dir",
    "read_json",
]

MODEL_CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
#: Largest JSON file read from a model directory (a config, an index): real ones are < 2 MiB.
MAX_JSON_BYTES = 32 << 20


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory holding ``adapter_config.json`` (a PEFT adapter)."""
    p = Path(path).expanduser()
    return p.is_dir() and os.path.lexists(p / ADAPTER_CONFIG)


def _hf_cache_blob(folder: Path, real: str) -> bool:
    """Whether ``real`` is a blob of the Hugging Face cache repository ``folder`` belongs to
    (``.../models--X/snapshots/REV`` -> ``.../models--X/blobs/HASH``)."""
    snapshots = folder.parent
    if snapshots.name != "snapshots":
        return False
    blobs = os.path.realpath(snapshots.parent / "blobs")
    return os.path.dirname(real) == blobs


def dir_member(folder: Path, name: str, what: str) -> Path:
    """The file ``name`` of ``folder``, refused unless it is a plain name of a regular file
    that stays inside ``folder`` (links included; see the module docstring)."""
    if (
        not isinstance(name, str) or not name or name in (".", "..") or "/" in name
        or "\\" in name or os.sep in name or "\x00" in name
    ):
        raise HessauditError(
            f"{what} names the file {name!r}: only plain file names inside {folder} are read",
            hint="a model directory's index lists its shards by file name, never by path",
        )
    path = folder / name
    if not os.path.lexists(path):
        raise HessauditError(f"{what}: {path} does not exist")
    real = os.path.realpath(path)
    inside = os.path.dirname(real) == os.path.realpath(folder)
    if not inside and not _hf_cache_blob(folder, real):
        raise HessauditError(
            f"{what}: {path} is a link to a file outside {folder}, not read",
            hint="copy the file into the directory",
        )
    return path


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a regular file of at most :data:`MAX_JSON_BYTES`."""
    with open_regular(path, what) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_JSON_BYTES:
            raise HessauditError(
                f"{what} {path} is {size >> 20} MiB; a model directory's JSON files are at "
                f"most {MAX_JSON_BYTES >> 20} MiB"
            )
        raw = fh.read(MAX_JSON_BYTES + 1)
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise HessauditError(f"{what} {path} is not valid JSON: {oneline(exc)}") from None
    if not isinstance(value, dict):
        raise HessauditError(f"{what} {path} holds a {type(value).__name__}, not a JSON object")
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_record(folder: Path, names: list[str]) -> tuple[str, int, list[dict[str, Any]]]:
    """(manifest SHA-256, total size, per-file records) of ``names`` in ``folder``."""
    files = []
    for name in names:
        path = folder / name
        files.append({"name": name, "sha256": _sha256(path), "size": path.stat().st_size})
    manifest = "".join(f"{f['name']} {f['sha256']} {f['size']}\n" for f in files)
    digest = hashlib.sha256(manifest.encode()).hexdigest()
    return digest, sum(f["size"] for f in files), files


