"""The outcome of a search: ``best.json`` (:func:`best_document`) and the ``hessaudit finetune``
command line that reproduces the best run (:func:`command_line`)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from typing import Any

from hessaudit.robust.config import FinetuneConfig
from hessaudit.robust.tune.results import TrialRecord
from hessaudit.robust.tune.settings import DIRECTIONS, TuneSettings

__all__ = ["SCHEMA", "best_document", "command_line"]

SCHEMA = "hessaudit.tune/1"


def _clean(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts, recursively) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def command_line(config: FinetuneConfig) -> str:
    """The ``hessaudit finetune`` command that runs ``config``: the required options, then
    every option that differs from its default (floats to 6 significant digits)."""
    defaults = FinetuneConfig(model="", pretrained="", data="", out="")
    parts = ["hessaudit", "finetune"]
    for f in dataclasses.fields(FinetuneConfig):
        value = getattr(config, f.name)
        if f.name not in ("model", "pretrained", "data", "out") and value == getattr(
            defaults, f.name
        ):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            if value:
                parts.append(flag)
            continue
        if value is None:
            continue
        if isinstance(value, (tuple, list)):  # --mean / --std: one comma-separated value
            value = ",".join(f"{v:.6g}" for v in value)
        parts += [flag, f"{value:.6g}" if isinstance(value, float) else str(value)]
    return " ".join(parts)


def best_document(
    settings: TuneSettings,
    records: list[TrialRecord],
    best: TrialRecord,
    config: FinetuneConfig,
    final: Any,
    seconds: float,
    storage: str,
) -> dict[str, Any]:
    """``best.json``: the objective, the best trial and its config, trial counts by state,
    and the final run (``final``, a ``FinetuneResult`` or None) with its held-out scores."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.state] = counts.get(r.state, 0) + 1
    final_doc = None
    if final is not None:
        last = final.final
        final_doc = _clean(
            {
                "out": str(final.out),
                "epochs_run": final.epochs_run,
                "val_acc_clean": last.get("val_acc"),
                "heldout_acc": last.get("heldout_acc"),
                "heldout_loss": last.get("heldout_loss"),
                "files": dict(final.files),
            }
        )
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "objective": settings.objective,
        "direction": DIRECTIONS[settings.objective],
        "best_trial": best.number,
        "score": best.score,
        "params": dict(best.params),
        "metrics": _clean(dict(best.metrics)),
        "trials": counts,
        "seed": settings.base.seed,
        "storage": storage,
        "seconds": seconds,
        "config": config.to_dict(),
        "command": command_line(config),
        "final": final_doc,
    }
