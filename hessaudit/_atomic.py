"""Write files so that a crash never leaves a half-written one behind, and never replace
anything that is not a regular file.

What an output path may name (:func:`target_kind`):

* a regular file, or a new name in an existing writable folder (``FILE``): the text goes to a
  temporary file in the same folder, which is then renamed over the target (``os.replace`` is
  atomic on POSIX within one file system), so a crash, ``kill -9`` or Ctrl-C leaves either the
  old file or the new one, never half of one;
* a symbolic link: followed. Every rule applies to the file it points to, which is replaced as
  above; the link itself stays (a dangling link gets its target created);
* a character device or a FIFO (``STREAM``: ``/dev/null``, a shell's ``>(cat)``, which is a
  ``/dev/fd/N`` pipe): opened and written *through*, never replaced;
* the process's own stdout or stderr (``STDOUT`` / ``STDERR``: same device and inode as file
  descriptor 1 or 2, e.g. ``/dev/stdout``, or a log file that stderr is redirected to): written
  through that stream, so a redirected log is never replaced;
* anything else (a folder, a socket, a block device): refused with :class:`HessauditError`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hessaudit.errors import HessauditError

FILE = "file"
STREAM = "stream"
STDOUT = "stdout"
STDERR = "stderr"


def _label(path: str, flag: str | None) -> str:
    return f"{flag} {path}" if flag else path


def std_stream_of(st: os.stat_result) -> str | None:
    """``STDOUT`` / ``STDERR`` when ``st`` is the file behind descriptor 1 / 2, else None."""
    for fd, kind in ((1, STDOUT), (2, STDERR)):
        try:
            own = os.fstat(fd)
        except OSError:
            continue
        if (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino):
            return kind
    return None


def _check_folder(path: str, label: str) -> Path:
    """The folder that ``path`` (a symlink: its target) lands in must be a writable folder."""
    folder = Path(os.path.realpath(path)).parent
    # Name the folder as the user wrote it, unless a symlink leads elsewhere.
    shown = folder if os.path.islink(path) else (Path(path).parent or Path("."))
    if folder.exists() and not folder.is_dir():
        raise HessauditError(f"cannot write {label}: {shown} is a file, not a folder")
    if not folder.is_dir():
        raise HessauditError(f"cannot write {label}: folder {shown} does not exist")
    if not os.access(folder, os.W_OK):
        raise HessauditError(f"cannot write {label}: folder {shown} is not writable")
    return folder


def _what(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def target_kind(path: str | os.PathLike[str], *, flag: str | None = None) -> str:
    """What writing to ``path`` means: ``FILE``, ``STREAM``, ``STDOUT`` or ``STDERR``.

    Raises HessauditError (naming ``flag`` and ``path``) for a path that may not be written:
    a folder, socket or block device, a missing or read-only folder, a symlink loop.
    """
    text = os.fspath(path)
    label = _label(text, flag)
    if not text:
        raise HessauditError(f"{flag or 'output'}: the path is empty")
    try:
        st = os.stat(text)  # follows symlinks: the rules apply to the link's target
    except FileNotFoundError:
        _check_folder(text, label)
        return FILE
    except NotADirectoryError:
        _check_folder(text, label)  # raises: a parent is a file
        raise HessauditError(f"cannot write {label}: a parent is a file, not a folder") from None
    except OSError as exc:
        raise HessauditError(f"cannot write {label}: {exc.strerror or exc}") from None
    own = std_stream_of(st)
    if own is not None:
        return own
    if stat.S_ISREG(st.st_mode):
        _check_folder(text, label)
        return FILE
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return STREAM
    raise HessauditError(f"cannot write {label}: it is {_what(st.st_mode)}, not a file")


def check_writable(path: str | os.PathLike[str], *, flag: str | None = None) -> Path:
    """Raise HessauditError unless ``path`` can be written; return the folder it lands in.

    Commands call this (through :func:`hessaudit._paths.check_outputs`) before any work, so
    that a typo in an output path fails in a second, not after a long audit.
    """
    target_kind(path, flag=flag)
    return Path(os.path.realpath(os.fspath(path))).parent


def _write_through(path: str, kind: str, data: bytes, label: str) -> None:
    """Write ``data`` into a stream target (device, FIFO, our own stdout/stderr)."""
    try:
        if kind in (STDOUT, STDERR):
            stream = sys.stdout if kind == STDOUT else sys.stderr
            stream.flush()
            buffer = getattr(stream, "buffer", None)
            if buffer is not None:
                buffer.write(data)
                buffer.flush()
            else:
                stream.write(data.decode("utf-8"))
                stream.flush()
            return
        with open(path, "wb") as fh:  # no O_TRUNC effect on devices and FIFOs
            fh.write(data)
    except OSError as exc:
        raise HessauditError(f"cannot write {label}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, flag: str | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it becomes ``path`` (see the module doc).

    A regular target (a symlink's target, for a link) is replaced by a rename; a stream target
    receives the temporary file's bytes. On any exception the temporary file is removed and
    ``path`` is left untouched.
    """
    text = os.fspath(path)
    kind = target_kind(text, flag=flag)
    target = Path(os.path.realpath(text)) if kind == FILE else None
    folder = target.parent if target is not None else None  # streams: the system temp dir
    fd, tmp_name = tempfile.mkstemp(prefix=f".{Path(text).name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if target is not None:
            # mkstemp creates owner-only files; give the result the mode a plain open() would
            # (or keep the mode of the file it replaces).
            os.chmod(tmp, _target_mode(target))
            os.replace(tmp, target)
        else:
            _write_through(text, kind, tmp.read_bytes(), _label(text, flag))
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _target_mode(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_bytes(
    path: str | os.PathLike[str], data: bytes, *, flag: str | None = None
) -> None:
    """Write ``data`` to ``path``: atomically for a file, through a device or FIFO."""
    text = os.fspath(path)
    kind = target_kind(text, flag=flag)
    if kind != FILE:
        _write_through(text, kind, data, _label(text, flag))
        return
    with atomic_path(text, flag=flag) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str, *, flag: str | None = None) -> None:
    """Write ``text`` (UTF-8) to ``path``; see :func:`write_bytes`."""
    name = os.fspath(path)
    kind = target_kind(name, flag=flag)
    if kind != FILE:
        _write_through(name, kind, text.encode("utf-8"), _label(name, flag))
        return
    with atomic_path(name, flag=flag) as tmp:
        tmp.write_text(text, encoding="utf-8")
