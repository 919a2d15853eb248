"""Write files so that a crash never leaves a half-written one behind.

Everything hessaudit writes goes to a temporary file in the destination folder first and is
then renamed over the target (``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hessaudit.errors import HessauditError


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Raise HessauditError unless ``path`` can be written; return its folder.

    Commands call this before any work, so that a typo in an output path fails in a second,
    not after a long audit.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise HessauditError(f"cannot write {target}: it is a directory, not a file")
    if folder.exists() and not folder.is_dir():
        raise HessauditError(f"cannot write {target}: {folder} is a file, not a folder")
    if not folder.is_dir():
        raise HessauditError(f"cannot write {target}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise HessauditError(f"cannot write {target}: folder {folder} is not writable")
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    folder = check_writable(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates owner-only files; give the result the mode a plain open() would
        # (or keep the mode of the file it replaces).
        os.chmod(tmp, _target_mode(target))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _target_mode(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
