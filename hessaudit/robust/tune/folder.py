"""The folder of one search (``--out DIR``): what is in it and who may write it.

``DIR/tune.json`` (the settings), ``DIR/study.db`` (Optuna's storage: SQLite when SQLAlchemy
is installed, else ``DIR/study.journal``), ``DIR/trials/NNNN/`` (each trial's finetune run
folder), ``DIR/trials.csv``, ``DIR/best.json``, ``DIR/best/`` (the best parameters trained to
completion) and ``DIR/audit-train.npz`` (the audit's data, for ``--objective bound``).

One search per folder: :meth:`TuneFolder.lock` holds the same lock as ``finetune`` (see
:func:`~hessaudit.robust._lock.run_folder_lock`). :meth:`TuneFolder.check` refuses a folder
that holds files unless the search resumes (with the same settings) or overwrites, and then
removes only the search's own files.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hessaudit.errors import HessauditError
from hessaudit.robust._lock import run_folder_lock
from hessaudit.robust.tune.results import METRIC_KEYS, TrialRecord
from hessaudit.robust.tune.settings import RESUMABLE, TuneSettings

__all__ = ["TuneFolder", "write_json"]

#: What ``--overwrite`` removes: the files and folders a search writes, nothing else.
OWN_FILES = ("tune.json", "study.db", "study.journal", "trials.csv", "best.json",
             "audit-train.npz")
OWN_FOLDERS = ("trials", "best")


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """``document`` as indented JSON, written atomically (no NaN: the caller cleans them)."""
    from hessaudit._atomic import write_text

    write_text(path, json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")


class TuneFolder:
    """The search folder ``out`` and the paths of its files."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.settings_file = self.out / "tune.json"
        self.trials_csv = self.out / "trials.csv"
        self.best_json = self.out / "best.json"
        self.best = self.out / "best"
        self.audit_data = self.out / "audit-train.npz"

    def trial(self, number: int) -> Path:
        """The run folder of trial ``number``."""
        return self.out / "trials" / f"{number:04d}"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One search per folder: a second one into it stops at once, naming this one's pid."""
        with run_folder_lock(self.out, flag="--out"):
            yield

    def check(self, settings: TuneSettings, *, resume: bool, overwrite: bool) -> None:
        """Refuse a file as ``--out``; with ``resume``, a folder without a search or with one
        started with other settings; else a folder that holds files, unless ``overwrite``
        (then the search's own files are removed)."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise HessauditError(f"--out {out} is a file, not a folder")
        if resume:
            self._check_resume(settings)
            return
        if out.is_dir() and any(p.name != ".lock" for p in out.iterdir()):  # .lock: ours
            if not overwrite:
                raise HessauditError(
                    f"--out {out} already holds files",
                    hint="pass --resume to continue that search, --overwrite to start it again, "
                    "or choose another --out",
                )
            for name in OWN_FILES:
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
            for name in OWN_FOLDERS:
                if (out / name).is_dir():
                    shutil.rmtree(out / name)

    def _check_resume(self, settings: TuneSettings) -> None:
        out, path = self.out, self.settings_file
        if not path.is_file():
            raise HessauditError(
                f"--resume: no search to resume in {out} (tune.json is missing)",
                hint="start a new search without --resume",
            )
        saved = json.loads(path.read_text(encoding="utf-8"))
        now = settings.to_dict()
        for key, value in now.items():
            if key in RESUMABLE:
                continue
            if json.loads(json.dumps(saved.get(key), default=str)) != json.loads(
                json.dumps(value, default=str)
            ):
                raise HessauditError(
                    f"--resume: the search in {out} was started with different settings "
                    f"({key} differs)",
                    hint="pass the same options as the first run (only --trials, --timeout, "
                    "--no-final and --no-prune may change)",
                )

    def create(self, settings: TuneSettings, *, resume: bool) -> None:
        """Make the folder and ``trials/``; a new search writes ``tune.json``."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "trials").mkdir(exist_ok=True)
        if not resume:
            write_json(self.settings_file, settings.to_dict())

    def storage(self, optuna: Any) -> tuple[Any, str]:
        """Optuna's storage in the folder and its path: ``study.db`` (SQLite) when SQLAlchemy
        is installed, else ``study.journal``."""
        try:
            import sqlalchemy  # noqa: F401
        except ImportError:
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = self.out / "study.journal"
            return JournalStorage(JournalFileBackend(str(path))), str(path)
        path = self.out / "study.db"
        return optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}"), str(path)

    def write_trials(self, records: list[TrialRecord], names: list[str]) -> None:
        """``trials.csv``: one row per trial, a ``param_NAME`` column per searched option."""
        import pandas as pd

        from hessaudit._atomic import atomic_path

        columns = ["number", "state", "score", *[f"param_{n}" for n in names], *METRIC_KEYS,
                   "seconds", "error"]
        frame = pd.DataFrame([r.row(names) for r in records], columns=columns)
        with atomic_path(self.trials_csv) as tmp:
            frame.to_csv(tmp, index=False)

    def write_best(self, document: Mapping[str, Any]) -> None:
        """``best.json`` (see :func:`~hessaudit.robust.tune.best.best_document`)."""
        write_json(self.best_json, document)
