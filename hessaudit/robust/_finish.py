"""When a run is finished, and what ``--resume`` still has to do.

A run is finished only when ``finished.json`` exists: it is written **last**, after
``final.safetensors``, ``best.safetensors``, ``metrics.csv`` and (with ``--audit``)
``audit.json``, and removed first whenever a resume starts working in the folder. So whatever
point a run is stopped at (Ctrl-C, SIGTERM, ``kill -9``, a full disk), the folder either holds a
finished run or one that ``--resume`` completes:

* training epochs remain (``state.pt`` is behind ``--epochs`` and early stopping did not
  trigger): train them, then write the final outputs;
* training is done but ``finished.json`` is missing: rewrite ``last``/``final``/``best`` from
  the weights in ``state.pt`` (the last epoch's; ``best`` only when there is no validation
  split, else it was written at its epoch) and ``metrics.csv`` from the state, run the audit when
  ``--audit`` is on, then write ``finished.json``;
* ``finished.json`` is there but ``--audit`` (or another ``--audit-samples``) is asked for now:
  run only the audit;
* nothing of the above: "nothing to do" (exit 1, naming ``--epochs`` / ``--early-stop``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessaudit.errors import HessauditError
from hessaudit.robust.config import FinetuneConfig

FINISHED_NAME = "finished.json"
FINISHED_SCHEMA = "hessaudit.finetune-finished/1"


@dataclass(frozen=True)
class ResumePlan:
    """What a run (fresh or resumed) has to do."""

    train: bool  # epochs remain
    weights: bool  # write last/final/best (and metrics.csv) at the end
    audit: bool  # compute audit.json


def _audit_record(config: FinetuneConfig) -> dict[str, Any] | None:
    return {"samples": config.audit_samples} if config.audit else None


def read_finished(out: Path) -> dict[str, Any] | None:
    """The ``finished.json`` document, or None when it is missing or unreadable."""
    try:
        document = json.loads((out / FINISHED_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("schema") != FINISHED_SCHEMA:
        return None
    return document


def remove_finished(out: Path) -> None:
    """The run is being worked on again: it is not finished until the marker is rewritten."""
    with contextlib.suppress(FileNotFoundError):
        (out / FINISHED_NAME).unlink()


def resume_plan(
    out: Path,
    config: FinetuneConfig,
    state: Mapping[str, Any] | None,
    finished: Mapping[str, Any] | None,
) -> ResumePlan:
    """What is left to do in ``out``; raises "nothing to do" when it is all done.

    ``state`` is ``state.pt`` (None before the first epoch), ``finished`` the marker."""
    if state is None:
        return ResumePlan(train=True, weights=True, audit=config.audit)
    epoch = int(state["epoch"])
    bad_epochs = int(state["bad_epochs"])
    stopped = config.early_stop is not None and bad_epochs >= config.early_stop
    if not stopped and epoch < config.epochs:
        return ResumePlan(train=True, weights=True, audit=config.audit)
    weights = finished is None or finished.get("epochs_run") != epoch
    audit = config.audit and (weights or finished.get("audit") != _audit_record(config))
    if weights or audit:
        return ResumePlan(train=False, weights=weights, audit=audit)
    why = (
        f"stopped early at epoch {epoch} (no better validation accuracy for {bad_epochs} epochs)"
        if stopped
        else f"already finished its {epoch} epochs"
    )
    raise HessauditError(
        f"--resume {out}: the run {why}; nothing to do",
        hint="pass a larger --epochs (or --early-stop) to continue it",
    )


def finished_document(
    config: FinetuneConfig, *, epoch: int, stopped_early: bool, best_epoch: int | None,
    files: Mapping[str, str],
) -> dict[str, Any]:
    """``finished.json``: written last; its presence means every other output is complete."""
    return {
        "schema": FINISHED_SCHEMA,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "epochs_run": epoch,
        "stopped_early": stopped_early,
        "best_epoch": best_epoch,
        "audit": _audit_record(config),
        "files": sorted(Path(p).name for p in files.values()),
    }
