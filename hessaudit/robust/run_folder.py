"""The run folder of a fine-tuning run: its files, its lock and its finished marker.

:func:`~hessaudit.robust.trainer.run_finetune` takes a
:class:`~hessaudit.robust.config.FinetuneConfig` and writes a run folder (``config.out``):

* ``config.json``: every resolved option, plus what the run found (class count, which tensors
  came from the pretrained checkpoint and which are new, per-tensor radii, data sizes, seeds);
* ``metrics.csv``: one row per epoch (row 0 evaluates the starting point): training loss and
  accuracy on the (noisy) training labels, validation and held-out loss and accuracy on clean
  labels where known, the largest per-layer distance and distance / radius;
* ``final.safetensors`` (the last epoch's weights) and ``best.safetensors`` (the epoch with the
  best validation accuracy; the final weights when there is no validation split), with
  metadata: config, pretrained SHA-256, noise matrix, seed, tool version, new tensors;
* ``noise.json`` when noise was injected or ``F`` estimated (see
  :func:`~hessaudit.robust.records.noise_document`);
* ``last.safetensors`` + ``state.pt``: the per-epoch checkpoint that ``resume=True`` continues
  from (model, optimizer, scheduler, RNG and early-stopping state; ``state.pt`` is written with
  ``torch.save`` and read with ``weights_only=True``; it holds the weights too, so one atomic
  file is the single source of truth);
* ``audit.json`` with ``config.audit``: the Hessian measure of the final checkpoint against the
  pretrained one (``hessaudit.audit/1``). The audit reads ``config.data`` with the source's own
  labels (the clean ones when the noise was injected by hessaudit) and n = the training-set
  size.
* ``finished.json``, written last: the run is complete (see :mod:`hessaudit.robust.resume`);
* ``.lock`` while a process works in the folder (see :mod:`hessaudit.robust._lock`).

A :class:`RunFolder` owns the folder: the checks before a run starts (:meth:`~RunFolder.check`),
its lock (:meth:`~RunFolder.lock`, :mod:`hessaudit.robust._lock`), the preparation
(:meth:`~RunFolder.prepare`), and the writers and readers of its files: ``config.json``,
``noise.json``, ``metrics.csv``, the weights (:meth:`~RunFolder.save_weights`), the resume state
and the finished marker. Every file is written atomically; under torchrun only rank 0 writes.
What a resume reads back and still has to do is :mod:`hessaudit.robust.resume`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hessaudit._version import __version__
from hessaudit.audit import distributed as _dist
from hessaudit.errors import HessauditError
from hessaudit.robust._lock import LOCK_NAME, run_folder_lock
from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.types import METRIC_COLUMNS, SCHEMA, STATE_FORMAT

if TYPE_CHECKING:
    from hessaudit.robust.training_run import TrainingRun

__all__ = [
    "FINISHED_NAME",
    "FINISHED_SCHEMA",
    "OUTPUT_NAMES",
    "STATE_FORMAT",
    "RunFolder",
]

FINISHED_NAME = "finished.json"
FINISHED_SCHEMA = "hessaudit.finetune-finished/1"
#: Files a run writes; ``overwrite=True`` removes exactly these (never anything else).
OUTPUT_NAMES = (
    "config.json",
    "metrics.csv",
    "noise.json",
    "final.safetensors",
    "best.safetensors",
    "last.safetensors",
    "state.pt",
    "audit.json",
    FINISHED_NAME,
)


def _is_transient(name: str) -> bool:
    """The lock file, and temporary files of our atomic writes that a kill left behind."""
    if name == LOCK_NAME:
        return True
    return name.startswith(".") and name.endswith(".tmp") and any(
        name.startswith(f".{output}.") for output in OUTPUT_NAMES
    )


def audit_record(config: FinetuneConfig) -> dict[str, Any] | None:
    """What ``finished.json`` records of the audit asked for (``audit``): None without one."""
    return {"samples": config.audit_samples} if config.audit else None


class RunFolder:
    """The run folder ``path`` of one fine-tuning run (``config.out``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ the folder

    def is_empty(self) -> bool:
        """A folder that holds nothing but a lock and temporary files of killed writes."""
        path = self.path
        return path.is_dir() and all(_is_transient(p.name) for p in path.iterdir())

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse a run folder we may not write to, before any work (and any deletion)."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise HessauditError(f"--out {out} is a file, not a folder")
        if resume:
            if not (out / "config.json").is_file():
                raise HessauditError(
                    f"--resume {out}: no run to resume there (config.json is missing)",
                    hint="start a new run with --out",
                )
            return
        if out.is_dir() and not self.is_empty() and not overwrite:
            raise HessauditError(
                f"--out {out} already holds files",
                hint=f"pass --resume {out} to continue that run, --overwrite to replace its "
                "outputs, or choose another --out",
            )

    @contextlib.contextmanager
    def lock(self, *, flag: str = "--out") -> Iterator[Path]:
        """Hold the folder's exclusive lock for the block (see :mod:`hessaudit.robust._lock`);
        ``flag`` names the option in its error messages."""
        with run_folder_lock(self.path, flag=flag) as path:
            yield path

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Create the run folder; with ``overwrite``, delete the previous run's outputs (only
        the files in :data:`OUTPUT_NAMES`). Called once the run is set up, so that a bad option
        never costs the user a previous run."""
        out = self.path
        if not _dist.is_main():
            return
        if not resume and overwrite and out.is_dir():
            for name in OUTPUT_NAMES:
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
        if out.is_dir():  # under the folder's lock: no other writer owns these
            for stale in out.iterdir():
                if stale.name != LOCK_NAME and _is_transient(stale.name) and stale.is_file():
                    with contextlib.suppress(FileNotFoundError):
                        stale.unlink()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HessauditError(
                f"--out {out}: cannot create the folder ({exc.strerror})"
            ) from None

    def files(self) -> dict[str, str]:
        """The run's output files that exist, by short name (``final``, ``metrics``...)."""
        return {
            name.split(".")[0]: str(self.path / name)
            for name in OUTPUT_NAMES
            if (self.path / name).is_file()
        }

    # ------------------------------------------------------------------ documents

    def write_json(self, name: str, document: Mapping[str, Any]) -> None:
        """``name`` (``config.json``, ``noise.json``...), atomically; NaN is refused."""
        from hessaudit._atomic import write_text

        if not _dist.is_main():  # torchrun: only rank 0 writes
            return
        write_text(self.path / name, json.dumps(document, indent=2, allow_nan=False) + "\n")

    def write_config(
        self,
        config: FinetuneConfig,
        info: Mapping[str, Any],
        state: Mapping[str, Any] | None,
        *,
        resume: bool,
    ) -> None:
        """``config.json``: the resolved options and ``info`` (``resolved``). On resume the
        (possibly extended) config replaces the saved one and the resume, after the epoch
        ``state`` holds, is appended to ``resumes``."""
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        created, resumes = now, []
        if resume:
            with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
                previous = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
                created = previous.get("created", now)
                resumes = list(previous.get("resumes", []))
            after = 0 if state is None else int(state["epoch"])
            resumes.append({"after_epoch": after, "at": now})
        self.write_json("config.json", {
            "schema": SCHEMA,
            "tool_version": __version__,
            "created": created,
            "resumes": resumes,
            "config": config.to_dict(),
            "resolved": dict(info),
        })

    def saved_resolved(self) -> dict[str, Any]:
        """The ``resolved`` part of the saved ``config.json`` ({} when it has none)."""
        try:
            document = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise HessauditError(
                f"--resume: {self.path / 'config.json'} cannot be read"
            ) from None
        resolved = document.get("resolved") if isinstance(document, dict) else None
        return resolved if isinstance(resolved, dict) else {}

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """``metrics.csv``: one row per epoch, columns :data:`METRIC_COLUMNS`."""
        import pandas as pd

        from hessaudit._atomic import atomic_path

        frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
        if not _dist.is_main():
            return
        with atomic_path(self.path / "metrics.csv") as tmp:
            frame.to_csv(tmp, index=False)

    # ------------------------------------------------------------------ weights and state

    def save_weights(
        self, run: TrainingRun, kind: str, *, extra: Mapping[str, Any] | None = None
    ) -> None:
        """``KIND.safetensors`` (``best``, ``last``, ``final``): the model of ``run`` as it is
        now, with the metadata of :meth:`TrainingRun.weights_metadata`."""
        from hessaudit.inputs.checkpoints import save_checkpoint

        if not _dist.is_main():
            return
        save_checkpoint(
            self.path / f"{kind}.safetensors",
            run.model.state_dict(),
            metadata=run.weights_metadata(kind, extra),
        )

    def has_state(self) -> bool:
        return (self.path / "state.pt").is_file()

    def save_state(self, state: Mapping[str, Any]) -> None:
        """``state.pt`` (``torch.save``), the per-epoch resume state."""
        from hessaudit._atomic import atomic_path

        if not _dist.is_main():
            return
        with atomic_path(self.path / "state.pt") as tmp:
            torch.save(dict(state), tmp)

    def load_state(self) -> dict[str, Any]:
        """``state.pt``, read with ``weights_only=True`` (no code is unpickled)."""
        path = self.path / "state.pt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise HessauditError(
                f"--resume: {path} cannot be read ({type(exc).__name__}); the run cannot "
                "continue",
                hint="start again with --overwrite",
            ) from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise HessauditError(f"--resume: {path} is not a hessaudit finetune state")
        return state

    # ------------------------------------------------------------------ finished marker

    def read_finished(self) -> dict[str, Any] | None:
        """The ``finished.json`` document, or None when it is missing or unreadable."""
        try:
            document = json.loads((self.path / FINISHED_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(document, dict) or document.get("schema") != FINISHED_SCHEMA:
            return None
        return document

    def remove_finished(self) -> None:
        """The run is being worked on again: not finished until the marker is rewritten."""
        if not _dist.is_main():
            return
        with contextlib.suppress(FileNotFoundError):
            (self.path / FINISHED_NAME).unlink()

    def write_finished(
        self, config: FinetuneConfig, *, epoch: int, stopped_early: bool, best_epoch: int | None
    ) -> dict[str, str]:
        """``finished.json``, last of all outputs: its presence means every other output is
        complete. Returns the run's files by short name, the marker included."""
        files = self.files()
        self.write_json(FINISHED_NAME, {
            "schema": FINISHED_SCHEMA,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "epochs_run": epoch,
            "stopped_early": stopped_early,
            "best_epoch": best_epoch,
            "audit": audit_record(config),
            "files": sorted(Path(p).name for p in files.values()),
        })
        files["finished"] = str(self.path / FINISHED_NAME)
        return files
