"""Read input files safely: regular files only, bounded expansion, each file once.

Three classes of hostile input are refused here, before any library touches them:

* **Not a regular file.** A FIFO with no writer blocks ``open`` forever, ``/dev/zero`` never
  ends and a socket cannot be read. Every input path is ``stat``-ed first and opened with
  ``O_NONBLOCK`` (so a FIFO swapped in after the ``stat`` cannot block either), then
  ``fstat``-ed: only a regular file is read.
* **A small file that expands into a large one.** A zip bomb (a deflated member that inflates
  1000-fold), a ``.npy`` header that declares more data than it holds, a tensor view with
  stride 0 over one element. What a file declares is checked against a budget relative to the
  bytes it really holds (:func:`expansion_budget`) before it is materialized.
* **Folder walks that revisit or escape.** :func:`walk_files` lists each file once (by device
  and inode), never follows a directory link out of the folder it walks, into a folder that
  contains the link (a loop) or into one already read, and skips anything that is not a
  regular file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from hessaudit.errors import HessauditError

__all__ = [
    "EXPANSION_CAP",
    "EXPANSION_FLOOR",
    "EXPANSION_RATIO",
    "check_expansion",
    "check_regular_file",
    "check_tensor_views",
    "check_zip_archive",
    "check_zip_members",
    "expansion_budget",
    "open_regular",
    "refuse_special_file",
    "special_kind",
    "walk_files",
]

_MiB = 1 << 20
_GiB = 1 << 30
#: Expansion that is always allowed, whatever the file's size: small enough to hold in memory.
EXPANSION_FLOOR = 256 * _MiB
#: Largest ratio of declared (expanded) bytes to stored bytes beyond the floor. Real data
#: compresses 2-10x (photos, float weights); deflate's maximum, reached by zip bombs, is ~1030x.
EXPANSION_RATIO = 100
#: No file expands beyond this many bytes more than it stores, whatever its size.
EXPANSION_CAP = 16 * _GiB

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)
_REGULAR_ONLY = "hessaudit reads its inputs only from regular files; write the data to a file first"


def special_kind(mode: int) -> str | None:
    """What a ``st_mode`` describes when it is not a regular file ("a FIFO (named pipe)"...)."""
    if stat.S_ISREG(mode):
        return None
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "not a regular file"


def _label(what: str, path: str | os.PathLike[str]) -> str:
    return f"{what} {path}" if what else str(path)


def refuse_special_file(path: str | os.PathLike[str], what: str = "") -> None:
    """Raise :class:`HessauditError` when ``path`` exists and is a FIFO, device or socket.

    Missing paths and directories pass: callers report those in their own words.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    kind = special_kind(mode)
    if kind is not None and not stat.S_ISDIR(mode):
        raise HessauditError(
            f"{_label(what, path)} is {kind}, not a regular file", hint=_REGULAR_ONLY
        )


def check_regular_file(path: str | os.PathLike[str], what: str = "") -> os.stat_result:
    """``os.stat(path)`` when it is a regular file; :class:`HessauditError` otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise HessauditError(f"{_label(what, path)} does not exist") from None
    except (OSError, ValueError) as exc:
        raise HessauditError(f"{_label(what, path)} cannot be read: {exc}") from None
    kind = special_kind(st.st_mode)
    if kind is not None:
        raise HessauditError(
            f"{_label(what, path)} is {kind}, not a regular file", hint=_REGULAR_ONLY
        )
    return st


def open_regular(path: str | os.PathLike[str], what: str = "") -> BinaryIO:
    """Open a regular file for binary reading, never blocking on a FIFO.

    The path is opened with ``O_NONBLOCK`` (opening a FIFO that has no writer returns at once
    instead of waiting forever) and ``fstat``-ed, so what is read is the regular file that was
    checked, even if the path was replaced in between.
    """
    check_regular_file(path, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise HessauditError(
            f"{_label(what, path)} cannot be read: {type(exc).__name__}: {exc}"
        ) from None
    try:
        kind = special_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise HessauditError(
                f"{_label(what, path)} is {kind}, not a regular file", hint=_REGULAR_ONLY
            )
        with contextlib.suppress(AttributeError, OSError):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# --------------------------------------------------------------------------- budgets


def expansion_budget(stored: int, *, ratio: float = EXPANSION_RATIO) -> int:
    """Most bytes that ``stored`` bytes on disk may declare or expand into.

    ``max(stored, min(stored + EXPANSION_CAP, max(EXPANSION_FLOOR, ratio * stored)))``: never
    less than what is stored (an uncompressed file is its own size), up to ``ratio`` times
    more, always at least the floor, and never more than the cap beyond what is stored.
    """
    stored = max(int(stored), 0)
    grown = min(stored + EXPANSION_CAP, max(EXPANSION_FLOOR, int(ratio * stored)))
    return max(stored, grown)


def _size(n: int) -> str:
    for unit, scale in (("GiB", _GiB), ("MiB", _MiB), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def check_expansion(
    declared: int,
    stored: int,
    what: str,
    *,
    ratio: float = EXPANSION_RATIO,
    hint: str | None = None,
    before: str = "reading it",
) -> None:
    """Refuse when ``declared`` bytes exceed :func:`expansion_budget` of ``stored`` bytes."""
    budget = expansion_budget(stored, ratio=ratio)
    if declared > budget:
        raise HessauditError(
            f"{what} declares {_size(declared)} from {_size(stored)} on disk, more than the "
            f"{_size(budget)} it may expand to; refused before {before} (a zip bomb or a "
            "crafted file?)",
            hint=hint,
        )


def check_zip_members(archive: zipfile.ZipFile, stored: int, what: str) -> None:
    """Refuse a zip archive whose members declare more than its size allows, before inflating.

    Both Python's ``zipfile`` and torch's reader allocate (at most) the declared uncompressed
    size of a member, so checking the declared sizes bounds what inflating them can take.
    """
    declared = 0
    for info in archive.infolist():
        if info.file_size < 0 or info.compress_size < 0:
            raise HessauditError(f"{what}: the zip directory holds negative sizes")
        declared += info.file_size
    check_expansion(
        declared, stored, what,
        hint="store arrays uncompressed (numpy.savez, torch.save) if they really are that large",
    )


def check_zip_archive(path: str | os.PathLike[str], what: str) -> None:
    """:func:`check_zip_members` of ``path`` when it is a zip archive; nothing otherwise.

    A damaged archive passes: the library that reads it next reports the damage in its words.
    """
    with open_regular(path) as fh:
        if not zipfile.is_zipfile(fh):
            return
        try:
            with zipfile.ZipFile(fh) as archive:
                check_zip_members(archive, os.fstat(fh.fileno()).st_size, what)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return


#: Tensors of a checkpoint may add up to this many times the file's size: weights tied under
#: several names (one storage, several views) are legitimate, thousands of names are not.
TENSOR_RATIO = 16


def check_tensor_views(tensors: Mapping[str, Any], stored: int, what: str) -> None:
    """Refuse tensor views that reach more elements than their storage holds, and tensors
    that add up to more than :func:`expansion_budget` of the file (ratio ``TENSOR_RATIO``).

    A view's ``numel * element_size`` larger than its storage's bytes means some element is
    read more than once (a stride 0 from ``expand``, or overlapping strides): 4 stored bytes can
    then stand for a 30000 x 30000 tensor that the first copy, NaN check or cast materializes.
    Checked on the views as loaded, before any of that happens.
    """
    total = 0
    for name, t in tensors.items():
        elements = int(t.numel())
        nbytes = elements * int(t.element_size())
        total += nbytes
        if str(t.layout) != "torch.strided" or not elements:
            continue  # sparse layouts: only their dense size counts, in the total below
        storage = int(t.untyped_storage().nbytes())
        if nbytes > storage:
            raise HessauditError(
                f"{what}: tensor {name!r} of shape {tuple(t.shape)} (stride "
                f"{tuple(t.stride())}) is a view of {elements} elements over a storage of "
                f"{storage // max(int(t.element_size()), 1)}: a stride-0 or overlapping view, "
                "refused before it is expanded",
                hint="save tensors with .contiguous() (a state_dict of a model never has these)",
            )
    check_expansion(
        total, stored, f"{what} (all tensors together)", ratio=TENSOR_RATIO,
        hint="the file stores the same data under many names", before="using them",
    )


# --------------------------------------------------------------------------- folder walks


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def walk_files(
    top: Path,
    *,
    root: Path,
    seen_files: dict[tuple[int, int], Path],
    seen_dirs: set[tuple[int, int]],
    within: str = "the data folder",
) -> Iterator[tuple[Path, str | None]]:
    """Yield ``(path, None)`` for each regular file under ``top``, ``(path, why)`` for skips.

    Order: as ``os.walk`` top-down with sorted names (a folder's files, then its sub-folders);
    names starting with ``.`` are ignored. A file is listed once, however many links or hard
    links reach it (``seen_files`` maps (device, inode) to the first path; share it and
    ``seen_dirs`` between calls to count a file once across several tops). A directory link is
    followed only when its target lies inside ``top`` (called ``within`` in the reasons), does
    not contain the link (a loop) and was not read yet, so nothing is read twice or from
    outside. Non-regular files (FIFOs, devices) are skipped. Paths in reasons are shown
    relative to ``root``.
    """
    boundary = os.path.realpath(top)
    stack: list[tuple[Path, str | None]] = [(top, None)]
    while stack:
        folder, parent = stack.pop()
        real = os.path.realpath(folder)
        try:
            st = os.stat(folder)
        except OSError as exc:
            yield folder, f"unreadable folder: {type(exc).__name__}"
            continue
        key = (st.st_dev, st.st_ino)
        if parent is not None and _inside(parent, real):
            yield folder, "a link to a folder that contains it (a symlink loop), not followed"
            continue
        if not _inside(real, boundary):
            yield folder, f"a link to a folder outside {within}, not followed"
            continue
        if key in seen_dirs:
            yield folder, "a link to a folder already read, not followed"
            continue
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            yield folder, f"unreadable folder: {type(exc).__name__}"
            continue
        subdirs: list[tuple[Path, str]] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                est = os.stat(path)
            except OSError as exc:
                yield path, f"unreadable: {type(exc).__name__} (a broken link?)"
                continue
            if stat.S_ISDIR(est.st_mode):
                subdirs.append((path, real))
                continue
            kind = special_kind(est.st_mode)
            if kind is not None:
                yield path, f"{kind}, not a regular file"
                continue
            fkey = (est.st_dev, est.st_ino)
            if fkey in seen_files:
                first = seen_files[fkey]
                shown = os.path.relpath(first, root) if _inside(str(first), str(root)) else first
                yield path, f"the same file as {shown}, counted once"
                continue
            seen_files[fkey] = path
            yield path, None
        stack.extend(reversed(subdirs))
