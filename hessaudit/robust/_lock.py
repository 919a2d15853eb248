"""One writer per run folder: an exclusive ``flock`` on ``DIR/.lock``.

``finetune`` and ``tune`` hold the lock from before they read or write anything in their
folder until they return, so two runs pointed at the same ``--out`` cannot interleave their
files (a ``config.json`` from one seed beside the weights of another). The second one stops at
once with exit 1, naming the holder's pid, which the holder writes into the lock file.

Why these choices:

* ``flock`` is released by the kernel when the holder dies, ``kill -9`` included, so a crashed
  run never leaves a folder locked; a stale ``.lock`` file with a dead pid is just reused.
* The lock file is removed on release; a process that opened the old file just before that
  could then lock an unlinked inode, so after locking we check that ``DIR/.lock`` still is the
  file we locked, and retry when it is not.
* ``.lock`` is opened with ``O_NOFOLLOW | O_NONBLOCK`` and must be a regular file with one link:
  a planted symlink, hard link or FIFO named ``.lock`` is refused, never written through.
* A folder the lock had to create is removed again when the run leaves it empty (a bad option
  found after the lock costs the user nothing).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from hessaudit.errors import HessauditError

LOCK_NAME = ".lock"

try:  # POSIX only; elsewhere (Windows) runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


def _holder(fd: int) -> str:
    """``pid N`` from the lock file's content (read through our own descriptor)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        if text.isdigit():
            return f"pid {text}"
    return "pid unknown"


def _open_lock_file(path: Path, flag: str) -> int:
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR):
            raise HessauditError(
                f"{flag} {path.parent}: {path.name} is not a regular file",
                hint=f"remove {path} (hessaudit keeps its lock there)",
            ) from None
        raise HessauditError(
            f"{flag} {path.parent}: cannot create the lock file {path.name} ({exc.strerror})"
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise HessauditError(
            f"{flag} {path.parent}: {path.name} is not a plain file of its own",
            hint=f"remove {path} (hessaudit keeps its lock there)",
        )
    return fd


def _acquire(path: Path, flag: str) -> int:
    """Lock ``path`` (created if needed) and write our pid into it; the open descriptor."""
    while True:
        fd = _open_lock_file(path, flag)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise HessauditError(
                    f"{flag} {path.parent}: cannot lock {path.name} ({exc.strerror})"
                ) from None
            raise HessauditError(
                f"{flag} {path.parent} is in use by another hessaudit run ({holder})",
                hint="wait for it to finish, stop it, or choose another folder",
            ) from None
        try:
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)  # the previous holder removed the file meanwhile: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    return fd


@contextlib.contextmanager
def run_folder_lock(folder: str | os.PathLike[str], *, flag: str = "--out") -> Iterator[Path]:
    """Hold the exclusive lock of run folder ``folder`` (created when missing) for the block.

    ``flag`` names the option in error messages (``--out`` or ``--resume``).

    Raises:
        HessauditError: another process holds the lock (its pid is named), or the folder or
            its lock file cannot be used.
    """
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise HessauditError(f"{flag} {out} is a file, not a folder")
    created = []  # the folders the lock creates, leaf first; removed again if left empty
    for folder in (out, *out.parents):
        if folder.exists():
            break
        created.append(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HessauditError(f"{flag} {out}: cannot create the folder ({exc.strerror})") from None
    path = out / LOCK_NAME
    if fcntl is None:  # pragma: no cover - not POSIX
        yield path
        return
    try:
        fd = _acquire(path, flag)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield path
    finally:
        # unlink before unlocking: a waiter then finds the file gone and retries (see _acquire)
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders the lock created (leaf first) that the run left empty."""
    for folder in folders:
        try:
            folder.rmdir()  # fails, and stops, at the first folder that holds something
        except OSError:
            return
