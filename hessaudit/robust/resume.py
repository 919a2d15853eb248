"""Resuming a run: the config it continues with, the checks that it is the same run, and what
is left to do.

A run is finished only when ``finished.json`` exists: it is written **last**, after
``final.safetensors``, ``best.safetensors``, ``metrics.csv`` and (with ``--audit``)
``audit.json``, and removed first whenever a resume starts working in the folder. So whatever
point a run is stopped at (Ctrl-C, SIGTERM, ``kill -9``, a full disk), the folder either holds a
finished run or one that ``--resume`` completes (:func:`resume_plan`):

* training epochs remain (``state.pt`` is behind ``--epochs`` and early stopping did not
  trigger): train them, then write the final outputs;
* training is done but ``finished.json`` is missing: rewrite ``last``/``final``/``best`` from
  the weights in ``state.pt`` (the last epoch's; ``best`` only when there is no validation
  split, else it was written at its epoch) and ``metrics.csv`` from the state, run the audit when
  ``--audit`` is on, then write ``finished.json``;
* ``finished.json`` is there but ``--audit`` (or another ``--audit-samples``) is asked for now:
  run only the audit;
* nothing of the above: "nothing to do" (exit 1, naming ``--epochs`` / ``--early-stop``).

Only the options in :data:`~hessaudit.robust.config.RESUMABLE_FIELDS` may change on resume
(:func:`resume_config`, :func:`check_resume_options`), and the pretrained checkpoint and the
data must be the ones the run started with (:func:`check_resume_inputs`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessaudit.errors import HessauditError
from hessaudit.robust.config import RESUMABLE_FIELDS, FinetuneConfig
from hessaudit.robust.run_folder import RunFolder, audit_record
from hessaudit.robust.trust import check_confirmed, verify_factory
from hessaudit.robust.types import DataSetup

__all__ = [
    "ResumePlan",
    "check_resume_inputs",
    "check_resume_options",
    "load_run_config",
    "resume_config",
    "resume_plan",
]


# --------------------------------------------------------------------------- resume config


def load_run_config(out: str | Path) -> FinetuneConfig:
    """The :class:`FinetuneConfig` saved in ``out/config.json``."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise HessauditError(f"--resume {out}: no run to resume there (config.json is missing)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        saved = document["config"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise HessauditError(f"{path} is not a hessaudit finetune config") from None
    return FinetuneConfig.from_dict(saved, source=str(path))


def resume_config(out: str | Path, overrides: Mapping[str, Any] | None = None) -> FinetuneConfig:
    """The saved config of the run in ``out``, with ``overrides`` applied.

    Only the options in :data:`~hessaudit.robust.config.RESUMABLE_FIELDS` (``epochs``,
    ``early_stop``, ``device``, ``audit``, ``audit_samples``) may differ from the saved ones;
    any other override must equal the saved value. A factory ``model`` other than hessaudit's
    own, and ``allow_hub``, must be given again in ``overrides`` to be used at all (see
    :mod:`hessaudit.robust.trust`): ``config.json`` alone never makes hessaudit import code.
    """
    saved = load_run_config(out)
    check_confirmed(Path(out), saved, overrides or {})
    changes: dict[str, Any] = {}
    for name, value in (overrides or {}).items():
        if name == "out":
            if Path(value).resolve() != Path(out).resolve():
                raise HessauditError(f"--out {value} differs from --resume {out}")
            continue
        if not hasattr(saved, name):
            raise HessauditError(f"unknown option {name!r}")
        if name in RESUMABLE_FIELDS:
            changes[name] = value
        elif _differs(getattr(saved, name), value, name, saved):
            raise HessauditError(
                f"--{name.replace('_', '-')} {value} differs from the run being resumed "
                f"({getattr(saved, name)!r})",
                hint=f"only {', '.join('--' + f.replace('_', '-') for f in RESUMABLE_FIELDS)} "
                "may change on --resume",
            )
    return dataclasses.replace(saved, **changes, out=str(out))


def _differs(saved_value: Any, value: Any, name: str, saved: FinetuneConfig) -> bool:
    if saved_value == value:
        return False
    # options whose resolved value is saved: the unresolved default is no change
    if value is None and name in ("constraint", "noise_seed"):
        return False
    resolved = dataclasses.replace(saved, **{name: value})
    try:
        # the whole resolved config: one option may set another (estimate:METHOD sets
        # estimate_method)
        return resolved.resolved() != saved.resolved()
    except HessauditError:
        return True


# --------------------------------------------------------------------------- same run


def check_resume_options(config: FinetuneConfig, folder: RunFolder) -> None:
    """Refuse to resume the run in ``folder`` with ``config`` (resolved) when an option other
    than :data:`RESUMABLE_FIELDS` differs, when a cosine schedule would be extended, or when
    the factory file changed (checked before anything is imported)."""
    out = folder.path
    saved = load_run_config(out)
    for f in dataclasses.fields(FinetuneConfig):
        if f.name in (*RESUMABLE_FIELDS, "out"):
            continue
        if _differs(getattr(saved, f.name), getattr(config, f.name), f.name, saved):
            raise HessauditError(
                f"--{f.name.replace('_', '-')} differs from the run being resumed in {out}",
                hint="use resume_config() / pass only --epochs, --early-stop, --device, "
                "--audit with --resume",
            )
    if config.schedule == "cosine" and config.epochs != saved.epochs:
        raise HessauditError(
            f"--epochs {config.epochs}: a cosine schedule is planned for the run's "
            f"{saved.epochs} epochs and cannot be extended",
            hint="start a new run, or use --schedule step",
        )
    verify_factory(out, config.model, folder.saved_resolved().get("model_factory"))


def check_resume_inputs(folder: RunFolder, setup: DataSetup) -> None:
    """Refuse to resume when the pretrained checkpoint (SHA-256) or the training data (its
    fingerprint, noise included) changed since the run in ``folder`` started."""
    out = folder.path
    try:
        document = json.loads((out / "config.json").read_text(encoding="utf-8"))
        resolved = document.get("resolved", {})
    except (OSError, json.JSONDecodeError):
        raise HessauditError(f"--resume: {out / 'config.json'} cannot be read") from None
    saved_sha = resolved.get("pretrained", {}).get("sha256")
    if saved_sha is not None and saved_sha != setup.pretrained_record.sha256:
        raise HessauditError(
            f"--pretrained {setup.config.pretrained} changed since the run in {out} started "
            "(SHA-256 differs); the run cannot be resumed"
        )
    saved_fp = resolved.get("data_fingerprint")
    if saved_fp is not None and saved_fp != setup.data_fingerprint:
        raise HessauditError(
            f"--data {setup.config.data} changed since the run in {out} started; "
            "the run cannot be resumed"
        )


# --------------------------------------------------------------------------- what is left


@dataclass(frozen=True)
class ResumePlan:
    """What a run (fresh or resumed) has to do."""

    train: bool  # epochs remain
    weights: bool  # write last/final/best (and metrics.csv) at the end
    audit: bool  # compute audit.json


def resume_plan(
    folder: RunFolder,
    config: FinetuneConfig,
    state: Mapping[str, Any] | None,
    finished: Mapping[str, Any] | None,
) -> ResumePlan:
    """What is left to do in ``folder``; raises "nothing to do" when it is all done.

    ``state`` is ``state.pt`` (None before the first epoch), ``finished`` the marker."""
    if state is None:
        return ResumePlan(train=True, weights=True, audit=config.audit)
    epoch = int(state["epoch"])
    bad_epochs = int(state["bad_epochs"])
    stopped = config.early_stop is not None and bad_epochs >= config.early_stop
    if not stopped and epoch < config.epochs:
        return ResumePlan(train=True, weights=True, audit=config.audit)
    weights = finished is None or finished.get("epochs_run") != epoch
    audit = config.audit and (weights or finished.get("audit") != audit_record(config))
    if weights or audit:
        return ResumePlan(train=False, weights=weights, audit=audit)
    why = (
        f"stopped early at epoch {epoch} (no better validation accuracy for {bad_epochs} epochs)"
        if stopped
        else f"already finished its {epoch} epochs"
    )
    raise HessauditError(
        f"--resume {folder.path}: the run {why}; nothing to do",
        hint="pass a larger --epochs (or --early-stop) to continue it",
    )
