"""The output-path guard: every command checks its outputs here before any work.

Rules (docs/errors.md, "Outputs never destroy anything"):

1. ``-`` means stdout, for every output flag. At most one output may go to stdout: ``-``, or a
   path that *is* this process's stdout (``/dev/stdout``, same device and inode as fd 1).
2. An output is never one of the command's inputs (checkpoints, data, audit JSONs, the model
   factory file, a config file): neither the same resolved path (symlinks followed) nor the
   same file under another name (same ``(st_dev, st_ino)``, e.g. a hard link); nor inside an
   input that is a folder (a Hugging Face model, adapter or tokenizer directory, an
   ImageFolder), which is read as a whole.
3. Two outputs never name the same file (same tests as 2).
4. An output is never inside a folder that the command itself writes (``folders``: the demo's
   cache), and a run folder (``finetune``/``tune --out``) neither holds an input nor lies
   inside an input folder (:func:`check_run_folder`).
5. What a path may be (a regular file or a new name, a symlink, a device or FIFO written
   through, never a folder, socket or block device) is :func:`hessaudit._atomic.target_kind`.

Writing goes through :func:`write_output`; :func:`stdout_reserved` keeps whatever user code
(a model factory, a model's forward) prints away from a stdout that carries machine output.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from hessaudit._atomic import STDOUT, target_kind, write_text
from hessaudit.errors import HessauditError

PathArg = str | os.PathLike[str] | None


@dataclass(frozen=True)
class _Where:
    """One path as given, its resolved form and, when it exists, its (st_dev, st_ino)."""

    name: str  # the flag ("--json") or what the input is ("the fine-tuned checkpoint")
    path: str
    real: str
    ident: tuple[int, int] | None
    is_dir: bool = False

    def shown(self) -> str:
        return f"{self.name} {self.path}"

    def same(self, other: _Where) -> bool:
        if self.ident is not None and self.ident == other.ident:
            return True
        return self.real == other.real


def _where(name: str, path: str | os.PathLike[str]) -> _Where:
    text = os.fspath(path)
    if text == "-":
        try:
            st: os.stat_result | None = os.fstat(1)
        except OSError:
            st = None
        return _Where(name, text, "<stdout>", None if st is None else (st.st_dev, st.st_ino))
    try:
        st = os.stat(text)
    except OSError:
        st = None
    ident = None if st is None else (st.st_dev, st.st_ino)
    is_dir = st is not None and os.path.isdir(text)
    return _Where(name, text, os.path.realpath(text), ident, is_dir)


def _given(items: Mapping[str, PathArg]) -> list[tuple[str, str]]:
    return [(name, os.fspath(p)) for name, p in items.items() if p is not None and os.fspath(p)]


def _inside(child: str, folder: str) -> bool:
    return child != folder and child.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class OutputCheck:
    """What :func:`check_outputs` found: the flag whose output goes to stdout, if any."""

    stdout_flag: str | None

    @property
    def to_stdout(self) -> bool:
        return self.stdout_flag is not None


def check_outputs(
    outputs: Mapping[str, PathArg],
    inputs: Mapping[str, PathArg] | None = None,
    *,
    folders: Mapping[str, PathArg] | None = None,
    input_folders: bool = False,
) -> OutputCheck:
    """Refuse, before any work, outputs that could destroy something (rules in the module doc).

    ``outputs`` maps each output flag to its path (None: not given); ``inputs`` maps a
    description of each input ("the fine-tuned checkpoint") to its path (paths that do not
    exist, and names such as ``digits``, simply never match); ``folders`` maps a description
    to a folder that the command writes into itself. With ``input_folders`` (commands whose
    inputs may be folders: checkpoints, models, tokenizers, data), no output lies inside an
    input that is a folder. Raises HessauditError naming the flag.
    """
    given = _given(outputs)
    # target_kind also refuses what may not be written at all (a folder, a socket, ...).
    on_stdout = [
        flag for flag, path in given if path == "-" or target_kind(path, flag=flag) == STDOUT
    ]
    if len(on_stdout) > 1:
        raise HessauditError(
            f"only one output can go to stdout ('-'): {' and '.join(on_stdout)} both do",
            hint="write the others to files",
        )
    wheres = [_where(flag, path) for flag, path in given]
    for i, later in enumerate(wheres):
        for earlier in wheres[:i]:
            if later.same(earlier):
                raise HessauditError(
                    f"{later.shown()} is the same file as {earlier.shown()}",
                    hint="give each output its own path",
                )
    for name, path in _given(inputs or {}):
        source = _where(name, path)
        for out in wheres:
            if out.path != "-" and out.same(source):
                raise HessauditError(
                    f"{out.shown()} is {name} ({path}); an output never replaces an input",
                    hint="choose another output path",
                )
            # a folder input (a Hugging Face model or adapter directory, a tokenizer, an
            # ImageFolder) is read as a whole: nothing is written into it
            inside = source.is_dir and _inside(out.real, source.real)
            if input_folders and out.path != "-" and inside:
                raise HessauditError(
                    f"{out.shown()} is inside {name} ({path}); an output never writes into an "
                    "input folder",
                    hint="choose an output path outside it",
                )
    for name, path in _given(folders or {}):
        folder = _where(name, path)
        for out in wheres:
            if out.path != "-" and (out.same(folder) or _inside(out.real, folder.real)):
                raise HessauditError(
                    f"{out.shown()} is inside {name} ({path}), which this command writes itself",
                    hint="choose an output path outside it",
                )
    return OutputCheck(on_stdout[0] if on_stdout else None)


def check_output_paths(*paths: PathArg) -> None:
    """:func:`check_outputs` for a caller without flag names: the outputs are called
    "output 1", "output 2", ... in the messages."""
    check_outputs({f"output {i}": path for i, path in enumerate(paths, start=1)})


def check_run_folder(flag: str, folder: str | os.PathLike[str],
                     inputs: Mapping[str, PathArg]) -> None:
    """Refuse a run folder that holds one of the run's inputs, or lies inside an input folder.

    A run writes, and with ``--overwrite`` deletes, files in its folder; and a run folder
    inside an ImageFolder would become one more class of that data set.
    """
    out = _where(flag, folder)
    if out.ident is not None and not out.is_dir:
        raise HessauditError(f"{out.shown()} is a file, not a folder")
    for name, path in _given(inputs):
        source = _where(name, path)
        if source.ident is None:
            continue
        if out.same(source) or _inside(source.real, out.real):
            raise HessauditError(
                f"{out.shown()} holds {name} ({path}); a run writes and may delete files there",
                hint=f"choose another {flag}, or move the input out of it",
            )
        if source.is_dir and _inside(out.real, source.real):
            raise HessauditError(
                f"{out.shown()} is inside {name} ({path}); the run's files would become part "
                "of that input",
                hint=f"choose a {flag} outside it",
            )


def write_output(flag: str, path: str | os.PathLike[str], text: str) -> None:
    """Write one command output: ``-`` is stdout; anything else :func:`_atomic.write_text`."""
    if os.fspath(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_text(path, text, flag=flag)


@contextlib.contextmanager
def stdout_reserved(active: bool = True) -> Iterator[None]:
    """While ``active``, send everything written to stdout to stderr instead.

    Used around user code (importing and calling a model factory, the model's forward) when
    stdout carries machine output (``--json -``): a ``print`` there must not corrupt the JSON.
    Both Python's ``sys.stdout`` and file descriptor 1 (C extensions, subprocesses, data
    loader workers) are redirected; both are restored on exit.
    """
    if not active:
        yield
        return
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    saved: int | None = None
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:
        if saved is not None:
            os.close(saved)
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def factory_file(model: str | None) -> str | None:
    """The file of a ``--model path/to/file.py:function`` factory (an input), else None."""
    if not model or ":" not in model:
        return None
    target = model.strip().rpartition(":")[0]
    if not (target.endswith(".py") or "/" in target or os.sep in target):
        return None  # a package.module factory, or a hub name
    return os.path.expanduser(target)
