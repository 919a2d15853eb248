"""The run folder of a fine-tuning run, and what resuming it reads back.

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
  :func:`~hessaudit.robust._data_setup.noise_document`);
* ``last.safetensors`` + ``state.pt``: the per-epoch checkpoint that ``resume=True`` continues
  from (model, optimizer, scheduler, RNG and early-stopping state; ``state.pt`` is written with
  ``torch.save`` and read with ``weights_only=True``; it holds the weights too, so one atomic
  file is the single source of truth);
* ``audit.json`` with ``config.audit``: the Hessian measure of the final checkpoint against the
  pretrained one (``hessaudit.audit/1``). The audit reads ``config.data`` with the source's own
  labels (the clean ones when the noise was injected by hessaudit) and n = the training-set
  size.
* ``finished.json``, written last: the run is complete (see :mod:`hessaudit.robust._finish`);
* ``.lock`` while a process works in the folder (see :mod:`hessaudit.robust._lock`).

This module holds the folder's checks and preparation (:func:`_check_out`,
:func:`_prepare_out`), the writers of its files (under torchrun only rank 0 writes), the
resume state (:func:`_save_state`, :func:`_load_state`) and the resume config
(:func:`load_run_config`,
:func:`resume_config`). Split out of :mod:`hessaudit.robust.trainer`, which re-exports the
public names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hessaudit._version import __version__
from hessaudit.audit import distributed as _dist
from hessaudit.errors import HessauditError
from hessaudit.robust._lock import LOCK_NAME
from hessaudit.robust.config import RESUMABLE_FIELDS, FinetuneConfig
from hessaudit.robust.types import METRIC_COLUMNS, SCHEMA, DataSetup

STATE_FORMAT = "hessaudit.finetune-state/1"
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
    "finished.json",
)


# --------------------------------------------------------------------------- folder


def _is_transient(name: str) -> bool:
    """The lock file, and temporary files of our atomic writes that a kill left behind."""
    if name == LOCK_NAME:
        return True
    return name.startswith(".") and name.endswith(".tmp") and any(
        name.startswith(f".{output}.") for output in OUTPUT_NAMES
    )


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and all(_is_transient(p.name) for p in path.iterdir())


def _check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a run folder we may not write to, before any work (and any deletion)."""
    if out.exists() and not out.is_dir():
        raise HessauditError(f"--out {out} is a file, not a folder")
    if resume:
        if not (out / "config.json").is_file():
            raise HessauditError(
                f"--resume {out}: no run to resume there (config.json is missing)",
                hint="start a new run with --out",
            )
        return
    if out.is_dir() and not _is_empty_dir(out) and not overwrite:
        raise HessauditError(
            f"--out {out} already holds files",
            hint=f"pass --resume {out} to continue that run, --overwrite to replace its "
            "outputs, or choose another --out",
        )


def _prepare_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Create the run folder; with ``overwrite``, delete the previous run's outputs (only the
    files in :data:`OUTPUT_NAMES`). Called once the run is set up, so that a bad option never
    costs the user a previous run."""
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
        raise HessauditError(f"--out {out}: cannot create the folder ({exc.strerror})") from None


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    from hessaudit._atomic import write_text

    if not _dist.is_main():  # torchrun: only rank 0 writes
        return
    write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


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
    :mod:`hessaudit.robust._trust`): ``config.json`` alone never makes hessaudit import code.
    """
    from hessaudit.robust._trust import check_confirmed

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


# --------------------------------------------------------------------------- files


def _config_document(
    out: Path,
    config: FinetuneConfig,
    info: Mapping[str, Any],
    state: Mapping[str, Any] | None,
    resume: bool,
) -> dict[str, Any]:
    """``config.json``; on resume the (possibly extended) config replaces the saved one and
    the resume is appended to ``resumes``."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    created, resumes = now, []
    if resume:
        with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
            previous = json.loads((out / "config.json").read_text(encoding="utf-8"))
            created = previous.get("created", now)
            resumes = list(previous.get("resumes", []))
        resumes.append({"after_epoch": 0 if state is None else int(state["epoch"]), "at": now})
    return {
        "schema": SCHEMA,
        "tool_version": __version__,
        "created": created,
        "resumes": resumes,
        "config": config.to_dict(),
        "resolved": dict(info),
    }


def _write_metrics(out: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    from hessaudit._atomic import atomic_path

    frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    if not _dist.is_main():
        return
    with atomic_path(out / "metrics.csv") as tmp:
        frame.to_csv(tmp, index=False)


def _save_weights(
    path: Path,
    model: nn.Module,
    config: FinetuneConfig,
    setup: DataSetup,
    *,
    epoch: int,
    F: np.ndarray | None,
    F_source: str | None,
    new: list[str],
    kind: str,
    extra: Mapping[str, Any] | None = None,
) -> None:
    from hessaudit.inputs.checkpoints import save_checkpoint

    if not _dist.is_main():
        return
    save_checkpoint(
        path,
        model.state_dict(),
        metadata=_metadata(
            config, setup, epoch=epoch, F=F, F_source=F_source, new=new, kind=kind, extra=extra
        ),
    )


def _metadata(
    config: FinetuneConfig,
    setup: DataSetup,
    *,
    epoch: int,
    F: np.ndarray | None,
    F_source: str | None,
    new: list[str],
    kind: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    meta = {
        "format": SCHEMA,
        "kind": kind,
        "tool_version": __version__,
        "epoch": epoch,
        "seed": config.seed,
        "config": config.to_dict(),
        "pretrained_sha256": setup.pretrained_record.sha256,
        "num_classes": setup.num_classes,
        "noise_matrix": None if F is None else F.tolist(),
        "noise_matrix_source": F_source,
        "new_tensors": list(new),
    }
    meta.update(extra or {})
    return meta


# --------------------------------------------------------------------------- resume state


def _save_state(path: Path, state: Mapping[str, Any]) -> None:
    from hessaudit._atomic import atomic_path

    if not _dist.is_main():
        return
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HessauditError(
            f"--resume: {path} cannot be read ({type(exc).__name__}); the run cannot continue",
            hint="start again with --overwrite",
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise HessauditError(f"--resume: {path} is not a hessaudit finetune state")
    return state
